"""SecAgg+ secure aggregation: its parameters (``settings``), Flower's SecAgg+ workflow with
our round records (``workflow``), its ServerApp (``serverapp``) and runs that submit it to a
SuperLink (``link``).
"""
