"""Built-in trackers: TensorBoard and MLflow on the lifecycle hooks (``train.report_to``)."""
