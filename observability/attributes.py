"""Every span attribute key modelwatch sets, defined once.

The messaging keys are OpenTelemetry's current semantic conventions; the `modelwatch.*` keys are our
own, each with a one-line description (docs/tracing.md lists them).
"""

# OpenTelemetry messaging conventions.
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_ROUTING_KEY = "messaging.rabbitmq.destination.routing_key"
MESSAGING_BATCH_MESSAGE_COUNT = "messaging.batch.message_count"
MESSAGING_SUBSCRIPTION_NAME = "messaging.destination.subscription.name"  # the queue consumed
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"

# modelwatch's own.
MODEL_VERSION = "modelwatch.model.version"
"""The version of the model artifact that made a prediction (e.g. linreg-d34977323be1)."""
ABSOLUTE_ERROR = "modelwatch.absolute_error"
"""|y_true - y_pred| of the row the metric service recorded."""
BATCH_ROWS = "modelwatch.batch.rows"
"""How many consumed messages one flush made durable (and then acknowledged) together."""
DEAD_LETTER_REASON = "modelwatch.dead_letter.reason"
"""Why a message was dead-lettered (the same text as its x-error-reason header)."""
DEAD_LETTER_REASON_CLASS = "modelwatch.dead_letter.reason_class"
"""The class of a dead letter's reason (invalid_json, schema_violation, ...), a metric label."""
SCHEMA_ID = "modelwatch.schema.id"
"""The $id of the schema version a message was validated against."""

CUSTOM = {
    MODEL_VERSION: "version of the model artifact that made the prediction",
    ABSOLUTE_ERROR: "|y_true - y_pred| of the recorded row",
    BATCH_ROWS: "consumed messages made durable and acknowledged together by one flush",
    DEAD_LETTER_REASON: "why the message was dead-lettered (as in x-error-reason)",
    SCHEMA_ID: "$id of the schema version the message was validated against",
    DEAD_LETTER_REASON_CLASS: "the dead letter's reason class, a metric label (docs/metrics.md)",
}
