"""trgl_hf: Transport Regularized Greedy Learning (Karkar et al., NeurIPS 2023) for Hugging Face models.

Cut a model into modules, give each an auxiliary head, and train the modules greedily with the TRGL loss:

```python
from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

model = TRGLModel.from_base(base_model, TRGLConfig(num_modules=4, tau=10.0))
args = TRGLTrainingArguments(output_dir="out", trgl_mode="sequential", num_train_epochs=3)
TRGLTrainer(model=model, args=args, train_dataset=train, eval_dataset=validation).train()
```
"""

from .hub.push import HubPushError, push_final, push_run_stages, push_stage
from .modeling.architectures import supported_architectures, supported_families
from .modeling.configuration_trgl import TRGLConfig
from .modeling.losses import transport_cost
from .modeling.modeling_trgl import TRGLModel, TRGLOutput
from .modeling.registration import register_auto_classes
from .modeling.tasks import Task, get_task
from .models.cifar_weights import load_akamaster_resnet
from .models.configuration_cifar_resnet import CifarResNetConfig
from .models.configuration_trgl_stage import TRGLStageConfig
from .models.modeling_cifar_resnet import CifarResNetForImageClassification, CifarResNetModel
from .models.modeling_trgl_stage import (
    TRGLStageForImageClassification,
    TRGLStageForSequenceClassification,
    TRGLStageModel,
)
from .training.data import load_digits_dataset
from .training.loss_monitor import NonFiniteLossError
from .training.metrics import PerModuleMetrics, accuracy
from .training.run_callbacks import TRGLCallback
from .training.trainer import TRGLTrainer
from .training.training_args import TRGLTrainingArguments

register_auto_classes()

__version__ = "0.1.0"

__all__ = [
    "CifarResNetConfig",
    "CifarResNetForImageClassification",
    "CifarResNetModel",
    "HubPushError",
    "NonFiniteLossError",
    "PerModuleMetrics",
    "TRGLCallback",
    "TRGLConfig",
    "TRGLModel",
    "TRGLOutput",
    "TRGLStageConfig",
    "TRGLStageForImageClassification",
    "TRGLStageForSequenceClassification",
    "TRGLStageModel",
    "TRGLTrainer",
    "TRGLTrainingArguments",
    "Task",
    "accuracy",
    "load_akamaster_resnet",
    "load_digits_dataset",
    "push_final",
    "push_run_stages",
    "push_stage",
    "get_task",
    "register_auto_classes",
    "supported_architectures",
    "supported_families",
    "transport_cost",
]
