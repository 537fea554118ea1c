"""Local training under a memory budget with the methods as plug-ins (no Flower imports).

``context`` (settings, inputs, result, the state methods see), ``evaluation`` (loss/accuracy),
``budgeting`` (batch fit and refit, memory prediction and measurement, OOM fallback), ``loop`` (the
epochs and steps, calling method hooks only), ``metrics`` (one metrics builder), ``local``
(``train_local``, one client round) and ``centralized`` (one model over a whole data set).
"""

from fedprune.train.budgeting import ReferenceStep
from fedprune.train.context import ClientData, TrainConfig, TrainContext, TrainResult
from fedprune.train.evaluation import evaluate
from fedprune.train.local import train_local

__all__ = ["ClientData", "ReferenceStep", "TrainConfig", "TrainContext", "TrainResult", "evaluate",
           "train_local"]
