"""The training loop every model family shares; a family (:mod:`.ip2p`, :mod:`.flux_kontext`) adds only
model loading, the loss, the inference pipeline and how its weights are saved.

Contract. ``Trainer(cfg, paths).train()`` runs or resumes a run and returns the model folder.
- Accelerator: gradient accumulation across epoch ends, seedable sampler, ``mixed_precision`` (fp16 → fp32
  on a CPU), CPU when ``gpus: 0``.
- Data: :class:`relightflow.train.data.TripletDataset` (one reader and transform) or cached latents.
- Randomness: one noise generator per process (saved in checkpoints), augmentation seeded by
  (seed, epoch, row), data order by (seed, epoch): a resumed run repeats an uninterrupted one exactly.
- Checkpoints (:mod:`.checkpoints`): every ``checkpointing_steps`` and at ``max_steps``, written to a
  temporary folder and renamed; pruned to ``checkpoints_total_limit``; resumed only with the same
  fingerprint.
- Validation: the fixed-noise validation loss on ``validation_loss_samples`` rows at step 0 and every
  ``validation_steps``; then also a grid (input | prediction | target) of ``num_validation_images`` rows,
  relit through :mod:`relightflow.inference` with the settings the model folder gets.
- Outputs: ``output_dir`` (the model + ``relightflow_model.json`` + ``README.md``, replaced atomically),
  and in ``work_dir``: ``summary.json``, ``loss_curve.png``, ``loss.jsonl``, ``validation/step-*.png``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relightflow.devices import torch_dtype
from relightflow.inference import ModelSettings, Relighter, write_settings
from relightflow.manifest import write_text
from relightflow.train import checkpoints as ckpt
from relightflow.train import report
from relightflow.train.checkpoints import TrainerState
from relightflow.train.config import CADENCE_KEYS, TrainConfig, TrainPaths
from relightflow.train.data import TripletDataset, collate, latent_dataset, to_uint8

log = logging.getLogger(__name__)


class Trainer:
    """The shared loop. Subclasses implement the methods that raise ``NotImplementedError``."""

    family = ""
    ignored_keys: frozenset[str] = frozenset()  # settings this family does not train with

    def __init__(self, cfg: TrainConfig, paths: TrainPaths):
        self.cfg, self.paths = cfg.effective(), paths
        self.ema = None

    # ------------------------------------------------------------ the family's part
    def load_models(self) -> None:
        """Load the models; set ``self.model`` (the trained module) and freeze the rest."""
        raise NotImplementedError

    def loss(self, batch: dict[str, Any], generator: torch.Generator, train: bool = True) -> torch.Tensor:
        """The training loss of a batch; all randomness from ``generator``; ``train=False``: no dropout."""
        raise NotImplementedError

    def pipeline(self):
        """An inference pipeline around the current modules (the trained one unwrapped)."""
        raise NotImplementedError

    def save_weights(self, folder: Path, model) -> None:
        """Write the trained weights (``model``: unwrapped, EMA applied) as a loadable model folder."""
        raise NotImplementedError

    def inference_settings(self, pipe) -> ModelSettings:
        """What ``relightflow_model.json`` records (see :mod:`relightflow.inference`)."""
        raise NotImplementedError

    def base_models(self) -> list[str | None]:
        """The pretrained weights the run starts from (their identity is part of the fingerprint)."""
        return [self.cfg.pretrained]

    def prompt_kwargs(self) -> Callable[[str], dict[str, Any]] | None:
        """How the validation pipeline gets text conditioning (default: it encodes the prompt)."""
        return None

    def save_extra_state(self, folder: Path) -> None:
        """Family state saved in each checkpoint besides accelerate's (default: none)."""

    # ------------------------------------------------------------ setup
    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, ProjectConfiguration

        cfg, work = self.cfg, self.paths.work_dir
        cpu = cfg.gpus == 0 or not torch.cuda.is_available()
        return Accelerator(
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=cfg.gradient_accumulation_steps, sync_with_dataloader=False
            ),
            mixed_precision="no" if cpu and cfg.mixed_precision == "fp16" else cfg.mixed_precision,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
            log_with=None if cfg.report_to == "none" else cfg.report_to,
            project_config=ProjectConfiguration(project_dir=work, logging_dir=f"{work}/tensorboard"),
            cpu=cpu,
        )

    @property
    def weight_dtype(self) -> torch.dtype:
        return torch_dtype(self.accelerator.mixed_precision)

    def fingerprint(self) -> dict[str, Any]:
        """This run's fingerprint (computed on the main process, shared with the others)."""
        from accelerate.utils import broadcast_object_list

        cfg = self.cfg.model_dump(exclude=set(CADENCE_KEYS | self.ignored_keys))
        if "flux" in cfg:
            cfg["flux"] = {k: v for k, v in cfg["flux"].items() if k not in CADENCE_KEYS}
        box = [None]
        if self.accelerator.is_main_process:
            box[0] = ckpt.fingerprint(cfg, self.base_models(), self.paths.train_data, self.paths.latents)
        return broadcast_object_list(box)[0] if self.accelerator.num_processes > 1 else box[0]

    def _datasets(self) -> None:
        cfg, paths = self.cfg, self.paths
        if paths.latents:
            self.train_set = latent_dataset(paths.latents)
        else:
            self.train_set = TripletDataset(
                paths.train_data, cfg.resolution, cfg.center_crop, cfg.random_flip, cfg.seed
            )
        if len(self.train_set) == 0:
            raise ValueError(f"training split {paths.latents or paths.train_data} is empty")
        n_val = max(cfg.validation_loss_samples, cfg.num_validation_images)
        self.val_set = (
            TripletDataset(paths.val_data or paths.train_data, cfg.resolution, center_crop=True, limit=n_val)
            if n_val
            else None
        )

    def _optimizer(self, params):
        cfg = self.cfg
        if cfg.use_8bit_adam:
            try:
                import bitsandbytes as bnb
            except ImportError as e:
                raise ImportError("use_8bit_adam needs bitsandbytes (pip install bitsandbytes)") from e
            cls = bnb.optim.AdamW8bit
        else:
            cls = torch.optim.AdamW
        return cls(
            params,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.adam_weight_decay,
            eps=cfg.adam_epsilon,
        )

    def setup(self) -> None:
        from accelerate.utils import set_seed
        from diffusers.optimization import get_scheduler

        cfg = self.cfg
        self.accelerator = acc = self._accelerator()
        set_seed(cfg.seed)
        if cfg.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        self._datasets()
        self.load_models()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if self.ema is not None:
            acc.register_for_checkpointing(self.ema)
        loader = torch.utils.data.DataLoader(
            self.train_set,
            batch_size=cfg.batch_size,
            shuffle=True,
            collate_fn=collate,
            num_workers=cfg.dataloader_num_workers,
            drop_last=len(self.train_set) >= cfg.batch_size * acc.num_processes,
        )
        optimizer = self._optimizer(self.params)
        lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
            num_training_steps=cfg.max_steps * acc.num_processes,
        )
        self.model, self.optimizer, self.loader, self.lr_scheduler = acc.prepare(
            self.model, optimizer, loader, lr_scheduler
        )
        self.generator = torch.Generator(acc.device).manual_seed(cfg.seed + acc.process_index)
        if acc.is_main_process and cfg.report_to != "none":
            acc.init_trackers(
                "relightflow",
                config={k: v for k, v in cfg.model_dump().items() if isinstance(v, int | float | str | bool)},
            )

    # ------------------------------------------------------------ resume
    def resume(self) -> TrainerState:
        """The state of the newest checkpoint of this same run (weights loaded), else a fresh one."""
        acc, fp = self.accelerator, self.fingerprint()
        keep, stale = ckpt.select(self.paths.checkpoints, fp, self.cfg.max_steps)
        if acc.is_main_process:
            if stale:
                log.warning(
                    "%d checkpoint(s) of another run: training %s",
                    len(stale),
                    f"from {keep.name}" if keep else "from step 0",
                )
            ckpt.remove_stale(self.paths.checkpoints, stale)
            if keep is None:  # a fresh run: nothing of an older run may survive
                shutil.rmtree(self.paths.validation, ignore_errors=True)
        acc.wait_for_everyone()
        if keep is None:
            state = TrainerState(fingerprint=fp)
        else:
            acc.load_state(str(keep))
            self.generator.set_state(torch.load(keep / f"noise_rng_{acc.process_index}.pt"))
            state = ckpt.read_state(keep)
            log.info("resumed from %s (step %d)", keep, state.step)
        if acc.is_main_process:
            report.write_loss_log(self.paths.loss_log, state)
        return state

    # ------------------------------------------------------------ the loop
    def train(self) -> Path:
        if not hasattr(self, "accelerator"):
            self.setup()
        cfg, acc = self.cfg, self.accelerator
        state = self.resume()
        self.resumed_from = state.step
        if not state.val_losses:
            self.validate(state, grid=False)
        log.info(
            "training %s from step %d to %d on %d process(es)",
            self.family,
            state.step,
            cfg.max_steps,
            acc.num_processes,
        )
        self.model.train()
        t0, window, per_epoch = time.perf_counter() - state.seconds, [], len(self.loader)
        while state.step < cfg.max_steps:
            consumed = state.step * cfg.gradient_accumulation_steps
            self._set_epoch(consumed // per_epoch)
            skip = consumed % per_epoch
            for batch in acc.skip_first_batches(self.loader, skip) if skip else self.loader:
                window.append(self._micro_step(batch))
                if not acc.sync_gradients:
                    continue
                if self.ema is not None:
                    self.ema.step(self.params)
                state.step += 1
                loss = acc.reduce(torch.stack(window).mean(), "mean").item()
                state.losses.append([state.step, loss])
                window, state.seconds = [], time.perf_counter() - t0
                self._after_step(state, loss)
                if state.step >= cfg.max_steps:
                    break
        return self.finish(state)

    def _set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)
        if isinstance(self.train_set, TripletDataset):
            self.train_set.epoch = epoch

    def _micro_step(self, batch: dict[str, Any]) -> torch.Tensor:
        acc = self.accelerator
        with acc.accumulate(self.model):
            loss = self.loss(batch, self.generator)
            acc.backward(loss)
            if acc.sync_gradients and self.cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach().float()

    def _after_step(self, state: TrainerState, loss: float) -> None:
        cfg, acc, step = self.cfg, self.accelerator, state.step
        lr = self.lr_scheduler.get_last_lr()[0]
        acc.log({"train/loss": loss, "train/lr": lr}, step=step)
        if acc.is_main_process:
            report.append_loss(self.paths.loss_log, step, loss, lr)
            if step % cfg.log_every == 0 or step == 1:
                log.info("step %d/%d loss %.5f lr %.2e", step, cfg.max_steps, loss, lr)
        if step % cfg.validation_steps == 0 or step == cfg.max_steps:
            self.validate(state)
        if step % cfg.checkpointing_steps == 0 or step == cfg.max_steps:
            ckpt.save(acc, self.paths.checkpoints, state, self._save_rng, cfg.checkpoints_total_limit)

    def _save_rng(self, folder: Path) -> None:
        torch.save(self.generator.get_state(), folder / f"noise_rng_{self.accelerator.process_index}.pt")
        self.save_extra_state(folder)

    # ------------------------------------------------------------ validation
    def _ema_weights(self):
        """Context manager: the trained module temporarily holds the EMA weights."""
        if self.ema is None:
            return nullcontext()
        ema, params = self.ema, self.params

        class _Swap:
            def __enter__(self):
                ema.store(params)
                ema.copy_to(params)

            def __exit__(self, *exc):
                ema.restore(params)

        return _Swap()

    def validation_loss(self) -> float:
        """The loss on the validation rows with the same noise every time (no dropout)."""
        generator = torch.Generator(self.accelerator.device).manual_seed(self.cfg.seed)
        rows = [self.val_set[i] for i in range(min(len(self.val_set), self.cfg.validation_loss_samples))]
        losses = [
            self.loss(collate(rows[i : i + 4]), generator, train=False).item() * len(rows[i : i + 4])
            for i in range(0, len(rows), 4)
        ]
        return float(np.sum(losses) / max(1, len(rows)))

    def relighter(self) -> Relighter:
        """The trained model as :mod:`relightflow.inference` runs it (validation grids)."""
        pipe = self.pipeline()
        pipe.set_progress_bar_config(disable=True)
        return Relighter(
            pipe, self.inference_settings(pipe), self.cfg.seed, prompt_kwargs=self.prompt_kwargs()
        )

    def validate(self, state: TrainerState, grid: bool = True) -> None:
        """Record the validation loss and, with ``grid``, save a grid; on the main process."""
        acc, cfg = self.accelerator, self.cfg
        if acc.is_main_process and self.val_set is not None:
            model = acc.unwrap_model(self.model)
            model.eval()
            with self._ema_weights(), torch.no_grad(), acc.autocast():
                if cfg.validation_loss_samples:
                    state.val_losses.append([state.step, self.validation_loss()])
                    acc.log({"val/loss": state.val_losses[-1][1]}, step=state.step)
                    log.info("step %d validation loss %.5f", state.step, state.val_losses[-1][1])
                if grid and cfg.num_validation_images:
                    self._grid(state.step)
            model.train()
            if grid and state.step < self.cfg.max_steps:  # the live curve (the final one comes with the model)
                report.plot_curve(state, self.paths.loss_curve, f"{self.family} training")
        acc.wait_for_everyone()

    def _grid(self, step: int) -> None:
        relight = self.relighter()
        tiles, errors = [], []
        for i in range(min(self.cfg.num_validation_images, len(self.val_set))):
            row = self.val_set[i]
            source, target = to_uint8(row["source"]), to_uint8(row["target"])
            pred = relight(source, row["prompt"])
            errors.append(float(np.mean((pred / 255.0 - target / 255.0) ** 2)))
            tiles.append(np.concatenate([source, pred, target], axis=1))
        from relightflow.images import save_image

        path = self.paths.validation / f"step-{step:07d}.png"
        save_image(path, np.concatenate(tiles, axis=0))
        self.accelerator.log({"val/mse": float(np.mean(errors))}, step=step)
        if self.cfg.report_to == "tensorboard":
            grid = np.concatenate(tiles, axis=0)
            self.accelerator.get_tracker("tensorboard").log_images(
                {"validation": grid[None]}, step, dataformats="NHWC"
            )
        log.info("step %d validation grid mse %.4f -> %s", step, float(np.mean(errors)), path)

    # ------------------------------------------------------------ the end
    def finish(self, state: TrainerState) -> Path:
        """Save the model folder (EMA weights) atomically, the summary, the loss log and curve."""
        from relightflow.dataset import replace_dir

        acc, out = self.accelerator, Path(self.paths.output_dir)
        if not state.val_losses or state.val_losses[-1][0] != state.step:
            self.validate(state)
        acc.wait_for_everyone()
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            if self.ema is not None:
                self.ema.copy_to(self.params)
            tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            self.save_weights(tmp, model)
            settings = self.inference_settings(self.pipeline())
            settings = settings.model_copy(
                update={"steps": state.step, "fingerprint": ckpt.digest(state.fingerprint)}
            )
            write_settings(tmp, settings)
            data = report.summary(
                state,
                self.family,
                self.cfg.model_dump(),
                self.paths.model_dump(),
                {
                    "resumed_from": self.resumed_from or None,
                    "train_examples": len(self.train_set),
                    "fingerprint": ckpt.digest(state.fingerprint),
                },
            )
            write_text(tmp / "README.md", report.model_card(settings.model_dump(), data))
            replace_dir(tmp, out)
            report.write_loss_log(self.paths.loss_log, state)
            report.plot_curve(state, self.paths.loss_curve, f"{self.family} training")
            report.write_summary(self.paths.summary, data)
            log.info("saved the model to %s (step %d)", out, state.step)
        acc.wait_for_everyone()
        acc.end_training()
        return out


def local_or_id(model: str) -> str:
    """An existing local path made absolute (the model folder may be used from elsewhere), else the hub id."""
    return str(Path(model).resolve()) if Path(model).exists() else model
