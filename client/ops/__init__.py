"""Operations of a hospital: starting and watching its SuperNode, and the App-bundle check in front
of Flower's ClientApp process.

Apart from the privacy path (:mod:`fedsyn.client.site`, :mod:`fedsyn.client.app`,
:mod:`fedsyn.client.policy`, :mod:`fedsyn.client.replies`), which never imports this package: a
simulation runs the guard without any of it.
"""
