"""The dashboard's server never connects outside (see ``permerge.serve``): Streamlit's look-ups of
this machine's external and network addresses answer "unknown" instead of asking the network."""
from streamlit import net_util


def patch() -> None:
    net_util.get_external_ip = lambda: None
    net_util.get_internal_ip = lambda: None
