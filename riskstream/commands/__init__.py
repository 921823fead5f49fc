"""The `riskstream` subcommands, one module each: its arguments and what it runs."""


def add_broker_option(parser, what: str = "the embedded broker") -> None:
    """``--broker tansu|kafka``, the same on every command that starts an embedded stack."""
    parser.add_argument("--broker", choices=("tansu", "kafka"),
                        help=f"{what} (default: RISKSTREAM_BROKER, else tansu); kafka runs Apache Kafka from "
                             "Maven Central and needs Java 17+ and Maven")


def with_broker(settings, args):
    """The settings with ``--broker`` applied, when it was given."""
    broker = getattr(args, "broker", None)
    return settings.model_copy(update={"broker": broker}) if broker else settings
