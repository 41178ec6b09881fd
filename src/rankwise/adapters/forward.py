"""`RankwiseModel.forward` with the wrapped model's signature.

A wrapper whose forward is ``(*args, **kwargs)`` hides the argument names; transformers' Trainer
reads them (``inspect.signature(model.forward)``) to decide which dataset columns to keep, and drops
all of them ("The batch received was empty"). Here ``model.forward`` reports the wrapped model's
signature, read afresh on each access, and nothing is stored on the model (it pickles and deep-copies
as before). peft solves the same problem by rebinding a copy of the function on each instance.
"""

from __future__ import annotations

import inspect
from typing import Any


class BoundForward:
    """``model.forward`` of one RankwiseModel: calls the wrapped model, and reports the wrapped model's
    signature (``inspect.signature(model.forward)``), so that code reading the argument names sees
    ``input_ids``, ``labels``, ... (transformers' Trainer keeps only those dataset columns)."""

    __slots__ = ("__self__",)

    def __init__(self, model: Any) -> None:
        self.__self__ = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.__self__._check_usable()
        return self.__self__.base_model(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        try:
            return inspect.signature(self.__self__.base_model.forward)
        except (TypeError, ValueError):  # a forward without one (a builtin): what this one accepts
            return inspect.Signature([inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
                                      inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])  # fmt: skip


class SignatureForward:
    """A descriptor: ``model.forward`` is a `BoundForward` (no state is stored on the model, so it
    pickles and deep-copies as before); on the class, the plain function."""

    def __get__(self, model: Any, owner: type | None = None) -> Any:
        return owner._plain_forward if model is None else BoundForward(model)
