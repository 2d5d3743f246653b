"""MLflow pyfunc for a registered module, as models-from-code: this file is the model's code, its weights are the
version's safetensors artifacts, nothing is pickled.

``publish`` logs it with ``mlflow.pyfunc.save_model(python_model=<this file>, artifacts={"module": <module dir>},
model_config={module files' sha256, the backbone's registered name/version, the gate's rules and measurement})``.
Loading (``mlflow.pyfunc.load_model``, ``mlflow models serve -m models:/NAME@ALIAS --env-manager local``) runs
``load_context``: the module files are checked against the digests in the config, the backbone version is fetched
from the registry of the current tracking URI (``MLFLOW_TRACKING_URI``) and verified, and the one policy check
(``modpipe.registry.policy``) runs before any weight is loaded. Input: a DataFrame with a ``text`` column (or a
list of strings); output: one row per text with ``label``, ``probabilities`` (in ``labels`` order), ``labels``,
``model`` and ``module_digest``.
"""

import mlflow
from mlflow.pyfunc import PythonModel


class ModuleModel(PythonModel):
    def load_context(self, context):
        from modpipe.registry.load import load_pyfunc_module

        self.loaded = load_pyfunc_module(context.artifacts["module"], context.model_config or {})

    def predict(self, context, model_input, params=None):
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            column = "text" if "text" in model_input.columns else model_input.columns[0]
            texts = [str(t) for t in model_input[column].tolist()]
        elif isinstance(model_input, dict) and "text" in model_input:
            texts = [str(t) for t in list(model_input["text"])]
        else:
            texts = [str(t) for t in list(model_input)]
        return pd.DataFrame(self.loaded.predict(texts))


mlflow.models.set_model(ModuleModel())
