"""The processes the product runs on: Spark sessions, the Spark Connect server, the embedded broker,
the Java check, child-process supervision and the `lambda-arch up` stack."""
