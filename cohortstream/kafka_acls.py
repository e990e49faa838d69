"""Kafka ACLs derived from the topic catalogue and the worker lanes: who may read and write what.

With ``StandardAuthorizer`` and no ACL, a user may do nothing (``allow.everyone.if.no.acl.found``
stays false). :func:`acl_plan` lists what each role needs and no more:

* the edges (DICOM listener, REDCap webhook, EHR loader, Orthanc change feed) only
  *produce* to the topics of their events (and the loader to the dead-letter topic);
* the worker lanes *consume* their input topics in their own consumer groups, produce
  their outputs (the features lane: its snapshot topic ``features.inputs``) and the dead-letter topic, and own their faust changelog/assignor
  topics (prefix ``<app_id>-<lane>-``, created by faust on start);
* the annotator consumes series-completed and annotation requests and produces
  suggestions in ``<app_id>-annotator``;
* the API produces review, annotation-request and audit events (the CLI's exports record
  their audit events as ``api`` too) and only *describes* topics and groups to report lag.

The broker's super user (``admin``) creates the catalogue's topics and applies the plan
(``cohortstream kafka acls --apply``). Role names are also the SCRAM user names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import CreateAclsRequest_v1, CreateAclsResponse_v1
from aiokafka.protocol.api import Request

from cohortstream.errors import CohortStreamError
from cohortstream.kafka_security import aiokafka_security
from cohortstream.lanes import LANE_TOPICS, LANES, lane_app_id
from cohortstream.settings import Settings
from cohortstream.topics import TOPICS

__all__ = ["ROLES", "Acl", "Operation", "PatternType", "ResourceType", "acl_plan", "apply_acls"]


class ResourceType(IntEnum):
    """Kafka's wire codes (``org.apache.kafka.common.resource.ResourceType``)."""

    TOPIC = 2
    GROUP = 3
    CLUSTER = 4


class PatternType(IntEnum):
    """Kafka's wire codes (``PatternType``)."""

    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    """Kafka's wire codes (``AclOperation``)."""

    READ = 3
    WRITE = 4
    CREATE = 5
    DESCRIBE = 8
    DESCRIBE_CONFIGS = 10
    IDEMPOTENT_WRITE = 12


_ALLOW = 3

PRODUCES: dict[str, tuple[str, ...]] = {
    "listener": ("dicom.instance-received",),
    "redcap-webhook": ("redcap.record-changed",),
    "ehr-loader": ("ehr.record", "dead-letter"),
    "orthanc-feed": ("dicom.instance-received",),
    "api": ("annotation.requested", "annotation.reviewed", "audit.access"),
    "worker": ("dicom.series-completed", "dead-letter", "features.inputs"),
    "annotator": ("annotation.suggested", "dead-letter"),
}
"""Role → the catalogue topics (logical names) it writes."""

ANNOTATOR_TOPICS = ("dicom.series-completed", "annotation.requested")

ROLES: tuple[str, ...] = tuple(PRODUCES)
"""Every role, which is also its SCRAM user name."""


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW entry: ``principal`` may do ``operation`` on the resource."""

    principal: str
    resource_type: ResourceType
    resource_name: str
    pattern: PatternType
    operation: Operation

    def describe(self) -> str:
        """One line for people (``cohortstream kafka acls``)."""
        pattern = "*" if self.pattern is PatternType.PREFIXED else ""
        return f"{self.principal:<22} {self.operation.name:<16} {self.resource_type.name.lower()}:{self.resource_name}{pattern}"


def _topic(role: str, name: str, operation: Operation, pattern: PatternType = PatternType.LITERAL) -> Acl:
    return Acl(f"User:{role}", ResourceType.TOPIC, name, pattern, operation)


def _group(role: str, name: str, operation: Operation) -> Acl:
    return Acl(f"User:{role}", ResourceType.GROUP, name, PatternType.LITERAL, operation)


def _produce(role: str, topics: Iterable[str]) -> list[Acl]:
    acls = [Acl(f"User:{role}", ResourceType.CLUSTER, "kafka-cluster", PatternType.LITERAL, Operation.IDEMPOTENT_WRITE)]
    for topic in topics:
        acls += [_topic(role, topic, Operation.WRITE), _topic(role, topic, Operation.DESCRIBE)]
    return acls


def _consume(role: str, group: str, topics: Iterable[str]) -> list[Acl]:
    acls = [_group(role, group, Operation.READ), _group(role, group, Operation.DESCRIBE)]
    for topic in topics:
        acls += [_topic(role, topic, Operation.READ), _topic(role, topic, Operation.DESCRIBE)]
    return acls


def _faust_internal(role: str, app_id: str) -> list[Acl]:
    """Changelog, repartition and assignor topics faust creates and uses under ``<app_id>-``."""
    prefix = f"{app_id}-"
    operations = (Operation.CREATE, Operation.READ, Operation.WRITE, Operation.DESCRIBE, Operation.DESCRIBE_CONFIGS)
    return [_topic(role, prefix, operation, PatternType.PREFIXED) for operation in operations]


def acl_plan(settings: Settings) -> list[Acl]:
    """Every ACL the deployment needs, sorted and without duplicates."""
    full = settings.topic
    acls: list[Acl] = []
    for role, topics in PRODUCES.items():
        acls += _produce(role, [full(t) for t in topics])
    for lane in LANES:
        group = lane_app_id(settings, lane)
        acls += _consume("worker", group, [full(t) for t in LANE_TOPICS[lane]])
        acls += _faust_internal("worker", group)
    annotator = f"{settings.app_id}-annotator"
    acls += _consume("annotator", annotator, [full(t) for t in ANNOTATOR_TOPICS])
    acls += _faust_internal("annotator", annotator)
    # The API reports lag: end offsets of every catalogue topic, committed offsets of our groups.
    acls += [_topic("api", spec.full_name(settings), Operation.DESCRIBE) for spec in TOPICS]
    acls += [Acl("User:api", ResourceType.GROUP, settings.app_id, PatternType.PREFIXED, Operation.DESCRIBE)]
    return sorted(set(acls))


class _CreateAcls(Request[CreateAclsRequest_v1]):  # type: ignore[misc]  # aiokafka ships no types
    """Several ACLs in one CreateAcls request (aiokafka's own builds one per request)."""

    API_KEY: ClassVar[int] = 30

    def __init__(self, acls: list[Acl]) -> None:
        self._acls = acls

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        if request_struct_class.API_VERSION < 1:
            raise CohortStreamError("the broker is too old for prefixed ACLs (CreateAcls v1, Kafka 2.0)")
        return request_struct_class(
            [
                (acl.resource_type, acl.resource_name, acl.pattern, acl.principal, "*", acl.operation, _ALLOW)
                for acl in self._acls
            ]
        )


async def apply_acls(settings: Settings, acls: list[Acl]) -> None:
    """Create ``acls`` on the broker (existing ones are left as they are; Kafka de-duplicates).

    ``settings`` must carry a user allowed to alter ACLs (the broker's super user).
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-acls",
        **aiokafka_security(settings),
    )
    try:
        await admin.start()
        response: Any = await admin._send_request(_CreateAcls(acls))  # no public batch call
    except KafkaError as exc:
        raise CohortStreamError(f"cannot create ACLs on {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        await admin.close()
    assert isinstance(response, CreateAclsResponse_v1) or hasattr(response, "creation_responses")
    failures = [
        (acl, code, message) for acl, (code, message) in zip(acls, response.creation_responses, strict=True) if code
    ]
    if failures:
        acl, code, message = failures[0]
        raise CohortStreamError(
            f"the broker refused {len(failures)} of {len(acls)} ACLs; first: {acl.describe()} (error {code}: {message})"
        )
