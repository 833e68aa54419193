"""What the search driver runs: the plan, search spaces, the Optuna study and its searcher, ASHA,
budgets, Tune callbacks and MLflow. Every module that subclasses a Ray Tune class lives here."""
