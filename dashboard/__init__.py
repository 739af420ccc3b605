"""The Streamlit side of the dashboard (app.py and pages/): session state, the progress panel and
the links between pages.  The library (``permerge``) never imports Streamlit."""
