"""The routing worker: route requests taken from a message broker, publish their outcomes.

``_core`` is broker-neutral (one request body in, one outcome out; the body is parsed by
``sds_plugins._requests``, as ``serve``'s are); ``_amqp`` (RabbitMQ, aio-pika, with
``_amqp_strings`` for properties that are not UTF-8) and ``_nats`` (NATS JetStream, nats-py,
with ``_nats_streams`` for its streams and consumer) move messages; ``_runtime`` starts a
router and a transport and stops them gracefully. The public names are re-exported by
``sds_plugins``.
"""
