"""The stream layer: the faust app (thin), its topics, agents and tables.

``streams.app.create_app(settings)`` builds the app; agents are attached by the modules
that define them, each through a ``register(app, topics, ...)`` function, so importing
this package never connects anywhere or reads the environment.
"""
