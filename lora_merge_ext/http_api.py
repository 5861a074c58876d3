"""The merge over HTTP: JSON routes under /ljl/v1/ on any FastAPI app (the WebUI's, gradio's, or a plain one).

    GET  /ljl/v1/loras            the LoRA files in the Lora folders
    GET  /ljl/v1/info?name=NAME    family, ranks, alphas and components of one file
    POST /ljl/v1/merge            merge files of the Lora folders into a new one there
    POST /ljl/v1/bake             write a joined file realised at a Σ vector (and lbw) as a plain LoRA

The same rules as the tab: inputs must lie in the Lora folders, the output name is a plain name
(one sub-folder at most), an existing file is replaced only with "overwrite": true, an input never.
Bad input answers 400 with {"error": message}; a body that does not fit the schema (a missing
field, a string for a number) gets FastAPI's usual 422 with its "detail" list.  With credentials (the
WebUI's --api-auth), every route needs HTTP Basic auth.  No WebUI import here: the host adapter passes everything in.
"""
from __future__ import annotations

import secrets
from typing import Callable, Dict, List, Optional, Union

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import VERSION as PYDANTIC_VERSION
from pydantic import BaseModel, StrictBool, StrictFloat, StrictInt, StrictStr

from .errors import LoraMergeError
from .merge import canonical_mode, refuse_svd_options
from .ui.handlers import MergeRequest, MergeService
from .ui.input_info import describe

PREFIX = "/ljl/v1"
PYDANTIC_1 = PYDANTIC_VERSION.startswith("1.")


# strict: a JSON true is not a rank of 1, "8" is not a number, 1 is not a name (pydantic 1 and 2 alike)
Number = Union[StrictInt, StrictFloat]  # a float rank such as 1.5 is refused by the merge rules, not cut to 1


class _Body(BaseModel):
    """A request body whose unknown fields are refused (422): a typo such as "weight" for "weights"
    must not give a merge with the defaults."""
    if PYDANTIC_1:
        class Config:
            extra = "forbid"
    else:
        model_config = {"extra": "forbid"}


class MergeBody(_Body):
    inputs: List[StrictStr]
    output: StrictStr
    mode: StrictStr = "concat"
    weights: Optional[List[Number]] = None
    lbw: Optional[List[Optional[StrictStr]]] = None
    rank: Optional[Number] = None
    conv_rank: Optional[Number] = None
    energy: Optional[Number] = None
    dtype: StrictStr = "fp16"
    device: StrictStr = "cpu"
    subfolder: StrictStr = ""
    overwrite: StrictBool = False
    measure: StrictBool = False  # also measure a concat's round-off (add and svd are always measured)


class BakeBody(_Body):
    source: StrictStr
    sigma: Union[StrictStr, Number] = "1"  # a single number may come as a JSON number
    lbw: Optional[StrictStr] = None
    output: StrictStr
    dtype: StrictStr = "fp16"
    subfolder: StrictStr = ""
    overwrite: StrictBool = False


def parse_api_auth(text: Optional[str]) -> Optional[Dict[str, str]]:
    """Credentials from the WebUI's --api-auth text, `user:password[,user2:password2]`; None when unset.
    Read as the WebUI's own API reads it (spaces are part of the names and passwords), so the same
    credentials open both."""
    if not text or not text.strip():
        return None
    credentials: Dict[str, str] = {}
    for item in text.split(","):
        user, colon, password = item.partition(":")
        if not colon or not user:
            raise LoraMergeError("--api-auth entries must be user:password, separated by commas")
        credentials[user] = password
    return credentials


def _auth_dependency(credentials: Dict[str, str]) -> Callable:
    security = HTTPBasic()
    users = {u.encode("utf-8"): p.encode("utf-8") for u, p in credentials.items()}

    def check(given: HTTPBasicCredentials = Depends(security)) -> None:
        user, password = given.username.encode("utf-8"), given.password.encode("utf-8")
        ok = False
        for known_user, known_password in users.items():  # compare with every entry: constant time per user
            if secrets.compare_digest(user, known_user) & secrets.compare_digest(password, known_password):
                ok = True
        if not ok:
            raise HTTPException(status_code=401, detail="Incorrect username or password",
                                headers={"WWW-Authenticate": "Basic"})

    return check


def _error(exc: LoraMergeError) -> JSONResponse:
    return JSONResponse(status_code=400, content={"error": str(exc)})


def make_router(service: MergeService, *, credentials: Optional[Dict[str, str]] = None,
                prefix: str = PREFIX) -> APIRouter:
    """The /ljl/v1 routes over one MergeService; credentials (user → password) turn on HTTP Basic auth."""
    dependencies = [Depends(_auth_dependency(credentials))] if credentials else []
    router = APIRouter(prefix=prefix, dependencies=dependencies, tags=["LoRA merge"])

    @router.get("/loras")
    def list_loras():
        labels = service.refresh()
        return {"output_dir": str(service.library.output_dir),
                "folders": [str(f) for f in service.library.folders],
                "loras": [{"name": label, "path": str(service.library.path_of(label))} for label in labels]}

    @router.get("/info")
    def lora_info(name: str):
        try:
            info = describe(service.library.path_of(name))
        except LoraMergeError as exc:
            return _error(exc)
        return {"name": name, "path": info.path, "family": info.family, "modules": info.modules,
                "ranks": list(info.ranks), "alphas": list(info.alphas), "size": info.size,
                "components": [{"name": n, "rank": r} for n, r in info.components]}

    @router.post("/merge")
    def merge(body: MergeBody):
        req = MergeRequest(inputs=list(body.inputs), name=body.output, mode=body.mode, weights=body.weights,
                           lbw=[s or "" for s in body.lbw] if body.lbw is not None else None, rank=body.rank,
                           conv_rank=body.conv_rank, energy=body.energy, dtype=body.dtype, device=body.device,
                           subfolder=body.subfolder, overwrite=body.overwrite, measure=body.measure)
        try:
            # the tab sends its (hidden) rank fields whatever the mode; a request that names them means them
            refuse_svd_options(canonical_mode(body.mode), body.rank, body.conv_rank, body.energy)
            return service.merge(req).as_json()
        except LoraMergeError as exc:
            return _error(exc)

    @router.post("/bake")
    def bake(body: BakeBody):
        try:
            return service.bake(body.source, str(body.sigma), body.lbw or "", body.output, subfolder=body.subfolder,
                                overwrite=body.overwrite, dtype=body.dtype).as_json()
        except LoraMergeError as exc:
            return _error(exc)

    return router


def register(app, service: MergeService, *, credentials: Optional[Dict[str, str]] = None,
             prefix: str = PREFIX) -> APIRouter:
    """Add the routes to a FastAPI app (e.g. the one on_app_started receives); returns the router."""
    router = make_router(service, credentials=credentials, prefix=prefix)
    app.include_router(router)
    return router
