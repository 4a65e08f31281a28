"""Where studies and trials live: the `Table` interface and its implementations."""
