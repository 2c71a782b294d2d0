"""POST /eval: the offline metrics of the served model, through the served path."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from serving.routes import EvaluatorDep, require_admin
from serving.schemas import ADMIN_RESPONSES, ERROR_RESPONSES, ErrorResponse, EvalRequest, EvalResponse

router = APIRouter(tags=["eval"], dependencies=[Depends(require_admin)])


@router.post("/eval", response_model=EvalResponse,
             responses={**ERROR_RESPONSES, **ADMIN_RESPONSES, 404: {"model": ErrorResponse},
                        409: {"model": ErrorResponse, "description": "an eval is running, or data mismatch"}})
async def run_eval(req: EvalRequest, evaluator: EvaluatorDep) -> EvalResponse:
    """``protocol.evaluate`` with the ORT encoder and item table; compared with the manifest's metrics.
    404 names the data folder it looked in (relative to the server's working folder, or a label)."""
    return await evaluator.evaluate(req)
