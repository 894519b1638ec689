"""API keys' own settings: whether a key's feedback may train models (the key itself, or an admin)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Reader, ServicesDep
from api.errors import ERRORS, ApiError
from api.schemas import KeySettings, TrainingSettings
from citeloop.errors import NotFoundError
from citeloop.keys import KeyManagementError, set_key_training_opt_out

router = APIRouter(tags=["keys"])


@router.patch("/v1/keys/{name}", response_model=KeySettings, responses=ERRORS)
def update_key(name: str, body: TrainingSettings, caller: Reader, services: ServicesDep) -> KeySettings:
    if name != caller.name and not caller.can("admin"):
        raise ApiError(403, "forbidden", f"'{caller.name}' may change only its own settings; other keys need an admin key")
    try:
        set_key_training_opt_out(name, body.training_opt_out, services.settings)
    except KeyManagementError as exc:
        raise NotFoundError(str(exc)) from None
    return KeySettings(name=name, training_opt_out=body.training_opt_out)
