"""The routing worker: route requests taken from a message broker, publish their outcomes.

``_core`` is broker-neutral (one request body in, one outcome out); ``_amqp`` (RabbitMQ,
aio-pika) and ``_nats`` (NATS JetStream, nats-py) move messages; ``_runtime`` starts a router
and a transport and stops them gracefully. The public names are re-exported by ``sds_plugins``.
"""
