"""MirrorMaker 2 on Kafka Connect: REST client, connector configs, internal-topic decoders."""
