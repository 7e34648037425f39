"""What every layer shares and nothing else: typed settings, UTC times, storage URIs, atomic files
and the Spark run tag."""
