"""Running: planning every (model, task, example) unit, answering the units here, in shards or on Ray, and the
run directory that holds their records."""
