# avdm developer commands. PYTHON can point at any interpreter or virtualenv.
PYTHON ?= python
export HF_HUB_OFFLINE ?= 1

.PHONY: help install test lint format demo demo-eval diag-eval demo-eval-flow teacher teacher-flow shapes-classifier synvid-shapes bench plan-table clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install:  ## install avdm with dev tools; keeps an installed (e.g. CUDA) torch, else takes the CPU wheel 2.13.0
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## run the whole test suite (offline, CPU, two workers, < 10 min on 2 cores)
	$(PYTHON) -m pytest -q -n 2 --dist loadfile

lint:  ## static checks
	$(PYTHON) -m ruff check avdm tests benchmarks

format:  ## auto-format
	$(PYTHON) -m ruff check --fix avdm tests benchmarks
	$(PYTHON) -m ruff format avdm tests benchmarks

demo:  ## the main job: distill a 4-step student from the shipped shapes teacher (CPU, ~12 min)
	$(PYTHON) -m avdm.train +experiment=avdm2_shapes

EVAL_DIR ?= outputs/demo_eval
demo-eval:  ## the README's results table: trains 5 students, compares them with the teacher (~75 min)
	$(PYTHON) -m avdm.train +experiment=avdm2_shapes hydra.run.dir=$(EVAL_DIR)/sdm_gan
	$(PYTHON) -m avdm.train +experiment=avdm2_shapes_gan_only hydra.run.dir=$(EVAL_DIR)/gan_only
	$(PYTHON) -m avdm.train +experiment=avdm2_shapes_video_sdm hydra.run.dir=$(EVAL_DIR)/video_sdm_gan
	$(PYTHON) -m avdm.train +experiment=lcm_shapes hydra.run.dir=$(EVAL_DIR)/lcm
	$(PYTHON) -m avdm.train +experiment=avdm2_shapes_lora hydra.run.dir=$(EVAL_DIR)/lora
	$(PYTHON) -m avdm.compare --out $(EVAL_DIR)/results \
	  --student "2D SDM + GAN=$(EVAL_DIR)/sdm_gan/checkpoints/last.ckpt" \
	  --student "GAN only=$(EVAL_DIR)/gan_only/checkpoints/last.ckpt" \
	  --student "video SDM + GAN=$(EVAL_DIR)/video_sdm_gan/checkpoints/last.ckpt" \
	  --student "consistency distillation (LCM)=$(EVAL_DIR)/lcm/checkpoints/last.ckpt" \
	  --student "2D SDM + GAN, LoRA generator + fake score (rank 16)=$(EVAL_DIR)/lora/checkpoints/last.ckpt"

DIAG_EVAL_DIR ?= outputs/diag_eval
diag-eval:  ## the README's collapse picture: the main job and the GAN-only ablation with diagnostics every 20 steps (~25 min)
	$(PYTHON) -m avdm.train +experiment=avdm2_shapes hydra.run.dir=$(DIAG_EVAL_DIR)/sdm_gan callbacks.diagnostics.every_n_steps=20
	$(PYTHON) -m avdm.train +experiment=avdm2_shapes_gan_only hydra.run.dir=$(DIAG_EVAL_DIR)/gan_only callbacks.diagnostics.every_n_steps=20
	$(PYTHON) -m avdm.plot $(DIAG_EVAL_DIR)/sdm_gan $(DIAG_EVAL_DIR)/gan_only --out $(DIAG_EVAL_DIR)/plots
	cp $(DIAG_EVAL_DIR)/plots/ratios.png docs/images/collapse_ratios.png

FLOW_EVAL_DIR ?= outputs/demo_eval_flow
demo-eval-flow: synvid-shapes  ## one table, both teachers: AVDM2 on each, AccVideo on the flow teacher (~35 min)
	$(PYTHON) -m avdm.train +experiment=avdm2_shapes hydra.run.dir=$(FLOW_EVAL_DIR)/avdm2_animatediff
	$(PYTHON) -m avdm.train +experiment=avdm2_shapes_flow hydra.run.dir=$(FLOW_EVAL_DIR)/avdm2_flow
	$(PYTHON) -m avdm.train +experiment=accvideo_shapes data.root=$(SYNVID_SHAPES) \
	  hydra.run.dir=$(FLOW_EVAL_DIR)/accvideo_flow
	$(PYTHON) -m avdm.compare --out $(FLOW_EVAL_DIR)/results --teacher animatediff_shapes --teacher wan_shapes \
	  --student "AVDM2 (2D SDM + GAN) on AnimateDiff=$(FLOW_EVAL_DIR)/avdm2_animatediff/checkpoints/last.ckpt" \
	  --student "AVDM2 (2D SDM + GAN) on the flow teacher=$(FLOW_EVAL_DIR)/avdm2_flow/checkpoints/last.ckpt" \
	  --student "AccVideo on the flow teacher=$(FLOW_EVAL_DIR)/accvideo_flow/checkpoints/last.ckpt"

TEACHER_DIR ?= outputs/teacher_shapes
teacher:  ## retrain the shipped shapes teacher (VAE, image UNet, motion modules) into avdm/assets
	$(PYTHON) -m avdm.train +experiment=teacher_shapes_vae hydra.run.dir=$(TEACHER_DIR)/run_vae \
	  callbacks.export.out_dir=$(TEACHER_DIR)/stage_vae
	$(PYTHON) -m avdm.train +experiment=teacher_shapes_image hydra.run.dir=$(TEACHER_DIR)/run_image \
	  model.pretrained.base_model=$(TEACHER_DIR)/stage_vae callbacks.export.out_dir=$(TEACHER_DIR)/stage_image
	$(PYTHON) -m avdm.train +experiment=teacher_shapes hydra.run.dir=$(TEACHER_DIR)/run_motion \
	  model.pretrained.base_model=$(TEACHER_DIR)/stage_image callbacks.export.out_dir=avdm/assets/shapes_teacher

SHAPES_DATA ?= data/shapes_32px_8f
FLOW_DIR ?= outputs/teacher_shapes_flow
teacher-flow:  ## train the flow-matching shapes teacher (WanTransformer3DModel) into avdm/assets/shapes_flow_teacher
	$(PYTHON) -m avdm.data.shapes $(SHAPES_DATA) --num-videos 1200 --num-frames 8 --size 32
	$(PYTHON) -m avdm.precompute model=wan_shapes_init data.csv=$(SHAPES_DATA)/shapes.csv \
	  data.video_dir=$(SHAPES_DATA)/videos data.stride=1 root=data/latents/shapes_32px_8f \
	  batch_size=50 shard_size=200 hydra.run.dir=$(FLOW_DIR)/precompute
	# The shipped weights were trained this way: 1000 steps without the high-noise term, then with it.
	$(PYTHON) -m avdm.train +experiment=teacher_shapes_flow loss.denoising_high_noise=null \
	  trainer.max_steps=1000 hydra.run.dir=$(FLOW_DIR)/run_stage1 callbacks.export.out_dir=$(FLOW_DIR)/stage1
	$(PYTHON) -m avdm.train +experiment=teacher_shapes_flow hydra.run.dir=$(FLOW_DIR)/run \
	  ckpt_path=$(FLOW_DIR)/run_stage1/checkpoints/last.ckpt callbacks.export.out_dir=avdm/assets/shapes_flow_teacher

shapes-classifier:  ## train the shapes video classifier (the shapes FVD extractor) into avdm/assets/shapes_classifier
	$(PYTHON) -m avdm.metrics.shapes_classifier avdm/assets/shapes_classifier

SYNVID_SHAPES ?= data/synvid/shapes_flow
synvid-shapes:  ## SynVid from the shipped flow teacher: 600 trajectories of 50 Euler steps + CFG 4
	$(PYTHON) -m avdm.data.shapes data/synvid/shapes_prompts.txt --prompts-per-caption 10
	$(PYTHON) -m avdm.synthesize model=wan_shapes prompts=data/synvid/shapes_prompts.txt \
	  root=$(SYNVID_SHAPES) sampler.num_steps=50 sampler.guidance_scale=4.0 batch_size=60 shard_size=60 \
	  dtype=float16 hydra.run.dir=outputs/synthesize_shapes_flow

bench:  ## benchmarks; results in benchmarks/results/
	$(PYTHON) -m benchmarks.run

plan-table:  ## the memory plan at the papers' shapes (docs/memory_plan.md, README): benchmarks/results/plan_table.md
	$(PYTHON) -m benchmarks.plan_table

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
