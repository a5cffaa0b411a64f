"""vLLM's side endpoints, for the clients that call them: ``POST /tokenize``, ``POST /detokenize``,
``GET /tokenizer_info``, ``GET /version``, ``GET|POST /ping``.

They answer in vLLM's shapes. Each checks the API key (when the server has keys) and waits for
the model like the completion routes; tokenizing chat messages loads their images within the
server's media policy, as a chat request would.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from .. import __version__
from .openai_protocol import BadRequest, DetokenizeRequest, TokenizeRequest, check_in_vocab


def add_side_routes(app, core, guard, responses) -> None:
    @app.post("/tokenize", responses=responses)
    async def tokenize(req: TokenizeRequest, request: Request):
        pipe = guard(request, req.model)
        if (req.prompt is None) == (req.messages is None):
            raise BadRequest("give exactly one of 'prompt' (text) and 'messages' (chat)", param="prompt")
        if req.prompt is not None:
            special = True if req.add_special_tokens is None else req.add_special_tokens
            ids = await core.prepare(lambda: pipe.tokenizer(req.prompt, add_special_tokens=special)["input_ids"])
        else:
            if req.add_special_tokens or not req.add_generation_prompt:
                raise BadRequest("for messages seer always renders the chat template with its generation prompt "
                                 "(add_generation_prompt=true) and no extra special tokens", param="messages")
            media = core.check_media(req.messages)
            ids = (await core.prepare(core.prepare_chat, req.messages, remote_media=media > 0)).token_ids
        return {"count": len(ids), "max_model_len": pipe.session_len, "tokens": list(ids), "token_strs": None}

    @app.post("/detokenize", responses=responses)
    async def detokenize(req: DetokenizeRequest, request: Request):
        pipe = guard(request, req.model)
        check_in_vocab(req.tokens, len(pipe.tokenizer), "token ids", "tokens")
        return {"prompt": await core.prepare(lambda: pipe.tokenizer.decode(req.tokens))}

    @app.get("/tokenizer_info", responses=responses)
    async def tokenizer_info(request: Request):
        pipe = guard(request, check_model=False)
        tok = pipe.tokenizer
        info = {"tokenizer_class": type(tok).__name__, "model_max_length": pipe.session_len,
                "vocab_size": len(tok), "chat_template": getattr(tok, "chat_template", None)}
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            info[name] = getattr(tok, name, None)
        return info

    @app.get("/version")
    async def version():
        return {"version": __version__}

    @app.api_route("/ping", methods=["GET", "POST"], responses={503: {"description": "not ready"}})
    async def ping():
        return Response(status_code=200 if core.healthy else 503)
