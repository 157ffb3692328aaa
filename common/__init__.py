"""fedsyn: federated, differentially private synthetic health records.

Sub-packages by concern (see docs/architecture.md):

- :mod:`fedsyn.data`: the public data contract (schema, rules), validation, table files;
- :mod:`fedsyn.privacy`: DP mechanisms (DP-SGD, noisy marginals), accounting and randomness;
- :mod:`fedsyn.model`: encoder, networks, conditioning, trainer and the single-site estimator;
- :mod:`fedsyn.evaluation`: fidelity / utility / privacy metrics and the HTML report;
- :mod:`fedsyn.trust`: audit trails, signatures, certificates;
- :mod:`fedsyn.federation`: the wire contract between coordinator and sites;
- :mod:`fedsyn.client`, :mod:`fedsyn.server`, :mod:`fedsyn.simulations`, :mod:`fedsyn.cli`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedsyn")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
