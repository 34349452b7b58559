"""The Flower SuperLink the cloud runs: its process and Control API (``process``), its TLS
certificates and SuperNode keys (``certs``) and the ``edgefleet fl certs`` commands
(``certs_cli``).
"""
