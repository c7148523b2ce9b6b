"""SSL benchmark harness core: knows no method, dataset or suite by name."""
