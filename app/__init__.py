"""The infd web app: a deep-zoom canvas rendered on demand from a latent, with boxes and prompts.

``python app.py`` serves it; :func:`app.server.create_app` builds it around any pipeline.
"""
