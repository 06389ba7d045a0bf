"""Who the caller is and what they may do, as the Kubernetes API server says.

The API key is a Kubernetes bearer token (a ServiceAccount's, or the caller's OIDC token), checked with a
TokenReview. Every action is then allowed exactly when a SubjectAccessReview says that user may do the same
verb on FineTuneJobs (files and jobs) or ModelAdapters (fine-tuned models) in the namespace asked for: the
namespace's own RBAC decides, and this API's ServiceAccount, which does the work, is never lent to a caller
beyond that. Answers are remembered a few seconds under a hash of the token, so a busy client costs the API
server a review now and then, and a flood of bad tokens costs the per-address budget only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from finetune_core.api import GROUP
from finetune_core.api.base import DNS_LABEL_PATTERN

from ..kube import Kube
from ..progress.ratelimit import RateLimiter
from ..tokens import ReviewCache
from .errors import ApiError, forbidden, invalid, rate_limited, unauthenticated

ALLOWED_SECONDS, REFUSED_SECONDS = 30.0, 10.0
CACHE_ENTRIES = 4096
_SERVICE_ACCOUNT = re.compile(r"system:serviceaccount:([^:]+):[^:]+")
_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)


@dataclass(frozen=True)
class Caller:
    token: str
    user: dict[str, Any]

    @property
    def username(self) -> str:
        return str(self.user.get("username", ""))

    def namespace(self, project: str | None) -> str:
        """The namespace asked for: the OpenAI-Project header, or a ServiceAccount's own namespace."""
        if project is None:
            found = _SERVICE_ACCOUNT.fullmatch(self.username)
            if found is None:
                raise invalid("Set the project (the OpenAI-Project header) to your Kubernetes namespace", "project")
            return found.group(1)
        if len(project) > 63 or not _DNS_LABEL.fullmatch(project):
            raise invalid("The project (OpenAI-Project header) must be a Kubernetes namespace name", "project")
        return project


class Access:
    def __init__(self, kube: Kube, caller_rate: float, caller_burst: int, address_rate: float, address_burst: int):
        self.kube = kube
        self.callers = RateLimiter(rate=caller_rate, burst=caller_burst)
        self.addresses = RateLimiter(rate=address_rate, burst=address_burst)
        self._reviews: ReviewCache[dict[str, Any]] = ReviewCache(CACHE_ENTRIES)
        self._decisions: ReviewCache[bool] = ReviewCache(CACHE_ENTRIES)

    def authenticate(self, token: str) -> Caller:
        """The caller the token belongs to; 401 when the API server does not accept it, 429 over its budget."""
        review = self._reviews.get(token)
        if review is None:
            # No audiences: the API server's own (ServiceAccount tokens, OIDC tokens its authenticator accepts).
            review = self.kube.token_review(token, [])
            self._reviews.put(token, review, ALLOWED_SECONDS if review.get("authenticated") else REFUSED_SECONDS)
        if not review.get("authenticated"):
            raise unauthenticated()
        caller = Caller(token, review.get("user") or {})
        if not self.callers.allow(caller.username):
            raise rate_limited()
        return caller

    def may(self, caller: Caller, namespace: str, verb: str, resource: str) -> bool:
        key = f"{caller.token}\n{namespace}\n{verb}\n{resource}"
        decision = self._decisions.get(key)
        if decision is None:
            review = self.kube.resource_access_review(caller.user, namespace, verb, GROUP, resource)
            decision = bool(review.get("allowed"))
            self._decisions.put(key, decision, ALLOWED_SECONDS if decision else REFUSED_SECONDS)
        return decision

    def require(self, caller: Caller, namespace: str, verb: str, resource: str, hidden: ApiError | None = None) -> None:
        """Go on only when RBAC allows it. ``hidden``: the answer instead of 403 where a refusal must not tell
        an object of another namespace from one that does not exist (it is a 404)."""
        if not self.may(caller, namespace, verb, resource):
            raise hidden or forbidden(verb, resource)
