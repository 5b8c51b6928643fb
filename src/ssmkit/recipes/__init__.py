"""Training recipes shipped with ssmkit: one YAML file of TrainConfig fields per setup
(``ssmkit recipes`` lists them; ``ssmkit train --recipe NAME`` uses one; docs/training.md)."""
