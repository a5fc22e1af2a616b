"""The stages whose metrics are logged as `<stage>/<name>`: `train/loss`, `val/kl`, `test/bpd`."""

TRAIN = "train"
VAL = "val"
TEST = "test"
