"""AdminService: API keys, feature flags and the audit log, served by the query unit.

The stores behind it belong to ``its_camera_ai.security`` (every service verifies keys and
follows flags); this package is the API over them and the audit log's reader.
"""

from __future__ import annotations

from its_camera_ai.admin._audit_reader import AuditLogReader
from its_camera_ai.admin._servicer import AdminServicer, add_admin_service

__all__ = ["AdminServicer", "AuditLogReader", "add_admin_service"]
