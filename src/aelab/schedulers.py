"""Learning-rate schedules that torch does not ship, stepped once per epoch like `scheduler=`'s
others."""

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from aelab.errors import ConfigError


class StagedDecay(LRScheduler):
    """Burda et al. (2016)'s schedule for the IWAE: stage i lasts growth^i epochs at

        lr_i = lr_0 * 10^(-i / stages_per_decade),

    i = 0, 1, 2, ... (with growth 3 and 7 stages per decade, stages 0..7 make their 3,280
    epochs; later epochs go on with stages 8, 9, ...)."""

    def __init__(
        self,
        optimizer: Optimizer,
        growth: int = 3,
        stages_per_decade: float = 7,
        last_epoch: int = -1,
    ) -> None:
        if isinstance(growth, bool) or not isinstance(growth, int) or growth < 1:
            raise ConfigError(f"model.scheduler.growth={growth!r} must be an integer >= 1")
        if not stages_per_decade > 0:
            raise ConfigError(
                f"model.scheduler.stages_per_decade={stages_per_decade!r} must be > 0"
            )
        self.growth = growth
        self.stages_per_decade = stages_per_decade
        super().__init__(optimizer, last_epoch)

    def stage(self, epoch: int) -> int:
        """The stage that epoch `epoch` (from 0) falls in."""
        stage, end = 0, 1  # stages 0..stage end before epoch `end`
        while epoch >= end:
            stage += 1
            end += self.growth**stage
        return stage

    def get_lr(self) -> list[float | Tensor]:
        factor = 10 ** (-self.stage(self.last_epoch) / self.stages_per_decade)
        return [base_lr * factor for base_lr in self.base_lrs]
