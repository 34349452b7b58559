"""The Flower side of a run: the ServerApp (``serverapp``) with its strategies (``strategies``)
and round loop (``rounds``), the files it starts from (``prepare``), driving it on a SuperLink
and collecting its result (``outcome``), and Flower's simulation engine (``simulation``).
"""
