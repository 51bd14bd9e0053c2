"""The ``sb.Brain`` plumbing the speaker-grouped batches need, apart from the recipe's Brain.

:class:`GroupedBatchBrain` overrides two private hooks of SpeechBrain 1.1.2's ``Brain``
(``tests/test_recipe.py`` checks that they still exist with these signatures):

- ``_train_loader_specifics``: :class:`~maskproxy_losses.data.sampler.SpeakerBatchSampler`
  splits its batches across DDP ranks itself; SpeechBrain's generic
  ``DistributedSamplerWrapper`` would pad and reshuffle them. The sharded dataset
  (:class:`~maskproxy_losses.data.shards.ShardedSpeakerBatches`) splits its shards by rank
  and learns the step to resume at through :class:`~maskproxy_losses.data.shards.EpochStart`.
- ``_wrap_distributed``: SpeechBrain converts BatchNorm to SyncBatchNorm, which needs
  GPUs; on CPU the modules are wrapped in plain DDP.
"""

import speechbrain as sb
import torch

from maskproxy_losses.data.sampler import SpeakerBatchSampler
from maskproxy_losses.data.shards import EpochStart, ShardedSpeakerBatches

__all__ = ["GroupedBatchBrain"]


class GroupedBatchBrain(sb.Brain):
    """``sb.Brain`` that trains on speaker-grouped batches, under DDP on GPUs or CPUs."""

    def _train_loader_specifics(self, dataset, loader_kwargs):
        if isinstance(dataset, ShardedSpeakerBatches):  # it splits its shards by rank itself;
            self.train_sampler = EpochStart(dataset, lambda: self.step)  # and needs the step
            return loader_kwargs
        sampler = loader_kwargs.get("batch_sampler")
        if isinstance(getattr(sampler, "sampler", None), SpeakerBatchSampler):
            self.train_sampler = sampler
            return loader_kwargs
        return super()._train_loader_specifics(dataset, loader_kwargs)

    def _wrap_distributed(self):
        if self.distributed_launch and str(self.device).startswith("cpu"):
            for name, module in self.modules.items():
                if any(p.requires_grad for p in module.parameters()):
                    self.modules[name] = torch.nn.parallel.DistributedDataParallel(
                        module, find_unused_parameters=self.find_unused_parameters
                    )
            return
        super()._wrap_distributed()
