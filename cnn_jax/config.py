"""The base config: fields every experiment has; configs/*.py start from `get_config()` here.

A config names everything an experiment depends on: there are no defaults in the code that
change results. Override any field on the command line: --config.optimizer.learning_rate=0.01
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Every field besides `name` is passed to the model constructor.
  config.model = ml_collections.ConfigDict({"name": "lenet5"})

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist_subset"   # mnist_subset | digits
  config.data.image_size = 32
  config.data.num_test = 1000
  config.data.split_seed = 0           # the fixed train/test split
  config.data.batch_size = 128         # global, across all devices and processes
  config.data.eval_batch_size = 256
  config.data.max_shift = 0            # random +-px translation of training images

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"      # adamw | sgd
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 0.0
  config.optimizer.weight_decay_on = "kernels"  # kernels | all
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.grad_clip_norm = 0.0  # 0 = off

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "warmup_cosine"  # constant | warmup_cosine | onecycle
  config.schedule.warmup_epochs = 0.0
  config.schedule.init_lr_fraction = 0.0
  config.schedule.end_lr_fraction = 0.0

  config.label_smoothing = 0.0
  config.num_epochs = 1
  config.total_steps = 0               # > 0 overrides num_epochs
  config.halt_after_steps = 0          # > 0: stop this invocation early (a rerun resumes)

  config.mesh = ml_collections.ConfigDict()
  config.mesh.num_devices = -1         # -1 = all visible devices

  config.log_every_steps = 50
  config.eval_every_steps = 500

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 500
  config.checkpoint.keep = 3
  config.checkpoint.use_async = True
  return config
