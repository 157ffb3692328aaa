"""Operations of the coordinator: the SuperLink and the ``flwr`` commands (:mod:`.superlink`), and
the read-only live view of a run (:mod:`.dashboard`, fed by :mod:`.dashboard_state`).

Apart from the privacy path (:mod:`fedsyn.server.coordinator`, :mod:`fedsyn.server.screening`,
:mod:`fedsyn.server.record`, :mod:`fedsyn.server.release`, :mod:`fedsyn.server.resume`,
:mod:`fedsyn.server.strategy`), which never imports this package: a simulation runs the
coordinator without any of it.
"""
