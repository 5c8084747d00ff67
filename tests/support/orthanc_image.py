"""How the orthancteam/orthanc image turns files and variables into Orthanc's configuration (tests only).

A small re-implementation, written from facts read in the image's builder repository
(orthanc-server/orthanc-builder, tag 26.8.1 = commit 0a4394c0), folder ``docker/orthanc/``:
``docker-entrypoint.sh``, ``generateConfiguration.py``, ``configurator.py``, ``helpers.py``
(the rules), ``env-var-legacy.json``, ``env-var-non-standards.json``, ``orthanc-defaults.json``,
``plugins-def.json`` (the tables, restated below as facts) and ``Dockerfile`` (the paths), plus
the ``envsubst`` package 0.1.5 the image installs (``$VAR`` substitution). Not shipped: the
static tests (``tests/unit/test_compose.py``) and the end-to-end test
(``tests/integration/test_docker_deployment.py``) use it, and ``tests/docker/test_image_rules.py``
pins each rule.

The rules, in the image's order:

1. Each ``*.json`` file of ``/etc/orthanc``, then of ``/run/secrets``: every ``$NAME``,
   ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}`` replaced from the environment (unset:
   empty string), ``//`` and ``/* */`` comments removed outside strings, then merged.
2. Each environment variable, in the environment's order:
   ``ORTHANC_JSON`` is merged like a file; ``NAME_SECRET=FILE`` makes ``/run/secrets/FILE`` the
   value of ``NAME`` (step 3); ``ORTHANC__A__B_C`` sets ``A.BC`` (split on ``__``, each ``_``-word
   keeps its first letter and lower-cases the rest; ``POSTGRESQL``, ``MYSQL``, ``OHIF`` as first
   word give ``PostgreSQL``, ``MySQL``, ``OHIF``; the alias table overrides; the legacy table maps
   old names and marks them deprecated); the value goes through ``json.loads`` (so ``8443`` is a
   number, ``true`` a boolean, ``NaN`` a float, ``["x"]`` a list) and stays a string when that
   fails. A plugin's enabling variable enables it unless its value is ``false``, which disables it.
3. Each file of ``/run/secrets`` named ``ORTHANC__…`` or named by a ``…_SECRET`` variable sets
   that key, its content (without final newlines) typed as in 2.
4. Defaults, never overriding what is set: the image's Orthanc defaults, then the defaults of
   each enabled plugin. A plugin is enabled when its section exists in the configuration, when
   its enabling variable is set (some viewers need the variable), when it is on by default
   (Orthanc Explorer 2, GDCM), or, for Python, when the root key ``PythonScript`` exists.
5. The image stops: deprecated (legacy) names set (since 26.7.0: ``exit(-2)``, status 254); an
   error while merging or linking (``exit(-1)``, 255); authentication on, remote access on and
   no user (``exit(-3)``, 253). ``ORTHANC_PASSWORD`` adds the user ``orthanc`` with that password.
6. The enabled plugins' libraries are linked from ``/usr/share/orthanc/plugins-available`` into
   ``/run/orthanc/plugins`` if that folder exists, else into ``/usr/share/orthanc/plugins``.

Merging: an object merges into an object key by key, recursively; any other value replaces the
one set before (files, ``ORTHANC_JSON``, variables, secrets) or is kept (defaults).

Where this differs from the image: files are read in name order and variables in the mapping's
order (the image takes the directory's and the process environment's order; the deployment
mounts one file and never sets a key twice, which the static tests check); a file that is not
JSON is an error here (the image logs it, then crashes or merges the previous file again); a
library missing from the plugins folder is reported in ``GeneratedConfig.missing_libs`` instead
of being an error (Debian, where the end-to-end test runs, does not package every
plugin of the image); the paths are those of an ``ImageLayout``, so a test can root them in a
temporary folder.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# -- facts: the image's tables ----------------------------------------------------------------

# env-var-non-standards.json: names whose key does not follow the conversion rule.
ALIASES: Mapping[str, str] = {
    "ORTHANC__CASE_SENSITIVE_PN": "CaseSensitivePN",
    "ORTHANC__HTTPS_CA_CERTIFICATES": "HttpsCACertificates",
    "ORTHANC__STORE_MD5_FOR_ATTACHMENTS": "StoreMD5ForAttachments",
    "ORTHANC__ORTHANC_EXPLORER_2__IS_DEFAULT_ORTHANC_UI": "OrthancExplorer2.IsDefaultOrthancUI",
    "ORTHANC__ORTHANC_EXPLORER_2__ENABLE_LINK_TO_LEGACY_UI": "OrthancExplorer2.EnableLinkToLegacyUi",
    "OE2_ENABLED": "OrthancExplorer2.IsDefaultOrthancUI",
    "ORTHANC__POSTGRESQL": "PostgreSQL",
    "ORTHANC__MYSQL": "MySQL",
    "ORTHANC__MYSQL__SSL_CA_CERTIFICATES": "MySQL.SslCACertificates",
    "ORTHANC__OHIF": "OHIF",
}

# env-var-legacy.json: deprecated since April 2020; from 26.7.0 the image refuses to start with
# any of them set. Name -> the key it stood for.
LEGACY: Mapping[str, str] = {
    "AC_ALLOW_REMOTE": "RemoteAccessAllowed",
    "AC_AUTHENTICATION_ENABLED": "AuthenticationEnabled",
    "AC_REGISTERED_USERS": "RegisteredUsers",
    "AUTHZ_WEBSERVICE": "Authorization.WebService",
    "AUTHZ_TOKEN_HTTP_HEADERS": "Authorization.TokenHttpHeaders",
    "AUTHZ_TOKEN_GET_ARGUMENTS": "Authorization.TokenGetArguments",
    "AUTHZ_UNCHECKED_RESOURCES": "Authorization.UncheckedResources",
    "AUTHZ_UNCHECKED_FOLDERS": "Authorization.UncheckedFolders",
    "AUTHZ_UNCHECKED_LEVELS": "Authorization.UncheckedLevels",
    "AZSTOR_ACC_KEY": "BlobStorage.AccountKey",
    "AZSTOR_ACC_NAME": "BlobStorage.AccountName",
    "AZSTOR_LICENSE_STRING": "BlobStorage.LicenseString",
    "AZSTOR_CONTAINER": "BlobStorage.ContainerName",
    "DICOM_AET": "DicomAet",
    "DICOM_AET_CHECK_ENABLED": "DicomCheckCalledAet",
    "DICOM_ALWAYS_ALLOW_ECHO_ENABLED": "DicomAlwaysAllowEcho",
    "DICOM_ALWAYS_ALLOW_STORE_ENABLED": "DicomAlwaysAllowStore",
    "DICOM_CHECK_MODALITY_HOST_ENABLED": "DicomCheckModalityHost",
    "DICOM_DICTIONARY": "Dictionary",
    "DICOM_MODALITIES": "DicomModalities",
    "DICOM_PORT": "DicomPort",
    "DICOM_QUERY_RETRIEVE_SIZE": "QueryRetrieveSize",
    "DICOM_SCP_TIMEOUT": "DicomScpTimeout",
    "DICOM_SCU_TIMEOUT": "DicomScuTimeout",
    "DICOM_STRICT_AET_COMPARISON_ENABLED": "StrictAetComparison",
    "DICOM_SYNCHRONOUS_CMOVE": "SynchronousCMove",
    "DICOM_UNKNOWN_SOP_CLASS_ACCEPTED": "UnknownSopClassAccepted",
    "DW_ROOT": "DicomWeb.Root",
    "DW_WADO_URI_ENABLED": "DicomWeb.EnableWado",
    "DW_WADO_URI_ROOT": "DicomWeb.WadoRoot",
    "DW_HOST": "DicomWeb.Host",
    "DW_TLS": "DicomWeb.Ssl",
    "DW_SERVERS": "DicomWeb.Servers",
    "DW_STOW_MAX_INSTANCES": "DicomWeb.StowMaxInstances",
    "DW_STOW_MAX_SIZE": "DicomWeb.StowMaxSize",
    "EXECUTE_LUA_ENABLED": "ExecuteLuaEnabled",
    "HTTP_CL_TIMEOUT": "HttpTimeout",
    "HTTP_CL_VERIFY_PEERS": "HttpsVerifyPeers",
    "HTTP_CL_CA_CERTS": "HttpsCACertificates",
    "HTTP_CL_PROXY": "HttpProxy",
    "HTTP_VERBOSE": "HttpVerbose",
    "HTTP_PORT": "HttpPort",
    "HTTP_KEEP_ALIVE": "KeepAlive",
    "HTTP_TCP_NODELAY": "TcpNoDelay",
    "HTTP_REQUEST_TIMEOUT": "HttpRequestTimeout",
    "IMPORT_OVERWRITE_INSTANCES": "OverwriteInstances",
    "LISTENER_LISTEN_ALL_ADDR": "RemoteAccessAllowed",
    "LOCALE": "Locale",
    "LUA_OPTIONS": "LuaOptions",
    "LUA_SCRIPTS": "LuaScripts",
    "PEERS": "OrthancPeers",
    "PG_PASSWORD": "PostgreSQL.Password",
    "PG_INDEX_ENABLED": "PostgreSQL.EnableIndex",
    "PG_STORAGE_ENABLED": "PostgreSQL.EnableStorage",
    "PG_HOST": "PostgreSQL.Host",
    "PG_PORT": "PostgreSQL.Port",
    "PG_DB": "PostgreSQL.Database",
    "PG_USER": "PostgreSQL.Username",
    "PG_SSL": "PostgreSQL.EnableSsl",
    "PG_LOCK": "PostgreSQL.Lock",
    "PLUGINS": "Plugins",
    "NAME": "Name",
    "SCHED_JOBS_HISTORY_SIZE": "JobsHistorySize",
    "SCHED_MAX_CONCURRENT_JOBS": "ConcurrentJobs",
    "SCHED_MAX_QUEUED_JOBS": "LimitJobs",
    "SCHED_SAVE_JOBS": "SaveJobs",
    "SERVEFOLDERS_ALLOW_CACHE": "ServeFolders.AllowCache",
    "SERVEFOLDERS_GENERATE_ETAGS": "ServeFolders.GenerateETag",
    "SERVEFOLDERS_EXTENSIONS": "ServeFolders.Extensions",
    "SERVEFOLDERS_FOLDERS": "ServeFolders.Folders",
    "STABLE_AGE": "StableAge",
    "STORAGE_ACCESS_ON_FIND": "StorageAccessOnFind",
    "STORAGE_DIR": "StorageDirectory",
    "STORAGE_MAX_SIZE": "MaximumStorageSize",
    "STORAGE_MAX_PATIENTS": "MaximumPatientCount",
    "STORE_DICOM": "StoreDicom",
    "TRANSFERS_THREADS": "Transfers.Threads",
    "TRANSFERS_RETRIES": "Transfers.MaxHttpRetries",
    "TRANSFERS_BUCKET_SIZE": "Transfers.BucketSize",
    "TRANSFERS_CACHE_SIZE": "Transfers.CacheSize",
    "TRANSFERS_MAX_PUSH_TRANSACTIONS": "Transfers.MaxPushTransactions",
    "USERMETADATA": "UserMetadata",
    "WL_STORAGE_DIR": "Worklists.Database",
    "WVB_ANNOTATIONS_STORAGE_ENABLED": "WebViewer.AnnotationStorageEnabled",
    "WVB_COMBINED_TOOL_ENABLED": "WebViewer.CombinedToolEnabled",
    "WVB_CROSS_HAIR_ENABLED": "WebViewer.CrossHairEnabled",
    "WVB_LANGUAGE": "WebViewer.DefaultLanguage",
    "WVB_DEFAULT_SELECTED_TOOL": "WebViewer.DefaultSelectedTool",
    "WVB_DOWNLOAD_AS_JPEG_ENABLED": "WebViewer.DownloadAsJpegEnabled",
    "WVB_INSTANCE_INFO_CACHE_ENABLED": "WebViewer.InstanceInfoCacheEnabled",
    "WVB_KEY_IMAGE_CAPTURE_ENABLED": "WebViewer.KeyImageCaptureEnabled",
    "WVB_KEYBOARD_SHORTCUTS_ENABLED": "WebViewer.KeyboardShortcutsEnabled",
    "WVB_OPEN_ALL_PATIENT_STUDIES": "WebViewer.OpenAllPatientStudies",
    "WVB_PRINT_ENABLED": "WebViewer.PrintEnabled",
    "WVB_REFERENCE_LINES_ENABLED": "WebViewer.ReferenceLinesEnabled",
    "WVB_SERIES_TO_IGNORE": "WebViewer.SeriesToIgnore",
    "WVB_STUDY_DOWNLOAD_ENABLED": "WebViewer.StudyDownloadEnabled",
    "WVB_SYNCHRONIZED_BROWSING_ENABLED": "WebViewer.SynchronizedBrowsingEnabled",
    "WVB_TOGGLE_OVERLAY_TEXT_BUTTON_ENABLED": "WebViewer.ToggleOverlayTextButtonEnabled",
    "WVB_VIDEO_ENABLED": "WebViewer.VideoDisplayEnabled",
}

# First words that the conversion rule would spell wrongly.
SECTION_WORDS: Mapping[str, str] = {"POSTGRESQL": "PostgreSQL", "MYSQL": "MySQL", "OHIF": "OHIF"}

# orthanc-defaults.json.
ORTHANC_DEFAULTS: Mapping[str, Any] = {
    "StorageDirectory": "/var/lib/orthanc/db",
    "RemoteAccessAllowed": True,
    "AuthenticationEnabled": True,
    "HttpsCACertificates": "/etc/ssl/certs/ca-certificates.crt",
    "Plugins": ["/run/orthanc/plugins", "/usr/share/orthanc/plugins"],
}


@dataclass(frozen=True, slots=True)
class PluginFacts:
    """One entry of plugins-def.json."""

    name: str
    libs: tuple[str, ...]
    variable: str | None = None
    legacy_variable: str | None = None
    section: str | None = None  # defaults to the name
    needs_variable: bool = False  # "enablingEnvVarIsRequired"
    root_setting: str | None = None  # "enablingRootSetting"
    on_by_default: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def config_section(self) -> str:
        return self.section or self.name


_ENABLE = {"Enable": True}
PLUGINS: tuple[PluginFacts, ...] = (
    PluginFacts("Authorization", ("libOrthancAuthorization.so",), "AUTHORIZATION_PLUGIN_ENABLED", "AUTHZ_ENABLED"),
    PluginFacts("ConnectivityChecks", ("libConnectivityChecks.so",), "CONNECTIVITY_CHECKS_PLUGIN_ENABLED"),
    PluginFacts("DicomWeb", ("libOrthancDicomWeb.so",), "DICOM_WEB_PLUGIN_ENABLED", "DW_ENABLED", defaults=_ENABLE),
    PluginFacts("Gdcm", ("libOrthancGdcm.so",), "GDCM_PLUGIN_ENABLED", on_by_default=True, defaults={
        "Throttling": 4,
        "RestrictTransferSyntaxes": [
            "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93",
        ],
    }),
    PluginFacts("OrthancWebViewer", ("libOrthancWebViewer.so",), "ORTHANC_WEB_VIEWER_PLUGIN_ENABLED", "OWV_ENABLED",
                section="WebViewer", needs_variable=True),
    PluginFacts("StoneWebViewer", ("libStoneWebViewer.so",), "STONE_WEB_VIEWER_PLUGIN_ENABLED", needs_variable=True),
    PluginFacts("OsimisWebViewerBasic", ("libOsimisWebViewer.so",), "OSIMIS_WEB_VIEWER1_PLUGIN_ENABLED", "WVB_ENABLED",
                section="WebViewer", needs_variable=True),
    PluginFacts("OsimisWebViewerBasicAlpha", ("libOsimisWebViewerAlpha.so",), "OSIMIS_WEB_VIEWER1_ALPHA_PLUGIN_ENABLED",
                "WVB_ALPHA_ENABLED", section="WebViewer", needs_variable=True),
    PluginFacts("PostgreSQL", ("libOrthancPostgreSQLIndex.so", "libOrthancPostgreSQLStorage.so"),
                "POSTGRESQL_PLUGIN_ENABLED", "PG_ENABLED", defaults={
                    "EnableIndex": True, "EnableStorage": False, "Port": 5432, "Host": "HOST MUST BE DEFINED",
                    "Database": "postgres", "Username": "postgres", "Password": "postgres", "EnableSsl": False,
                    "Lock": False,
                }),
    PluginFacts("MySQL", ("libOrthancMySQLIndex.so", "libOrthancMySQLStorage.so"), "MYSQL_PLUGIN_ENABLED",
                "MYSQL_ENABLED", defaults={
                    "EnableIndex": True, "EnableStorage": False, "Port": 3306, "Host": "HOST MUST BE DEFINED",
                    "Database": "mysql", "Username": "root", "Password": "mysql", "Lock": False,
                }),
    PluginFacts("Python", ("libOrthancPython.so",), "PYTHON_PLUGIN_ENABLED", root_setting="PythonScript"),
    PluginFacts("ServeFolders", ("libServeFolders.so",), "SERVE_FOLDERS_PLUGIN_ENABLED", "SERVEFOLDERS_ENABLED"),
    PluginFacts("Transfers", ("libOrthancTransfers.so",), "TRANSFERS_PLUGIN_ENABLED", "TRANSFERS_ENABLED"),
    PluginFacts("Worklists", ("libOrthancWorklists.so",), "WORKLISTS_PLUGIN_ENABLED", "WL_ENABLED", defaults=_ENABLE),
    PluginFacts("Housekeeper", ("libHousekeeper.so",), "HOUSEKEEPER_PLUGIN_ENABLED", defaults=_ENABLE),
    PluginFacts("DelayedDeletion", ("libDelayedDeletion.so",), "DELAYED_DELETION_PLUGIN_ENABLED", defaults=_ENABLE),
    PluginFacts("MultitenantDicom", ("libMultitenantDicom.so",), "MULTITENANT_DICOM_PLUGIN_ENABLED"),
    PluginFacts("AdvancedStorage", ("libAdvancedStorage.so",), "ADVANCED_STORAGE_PLUGIN_ENABLED", defaults=_ENABLE),
    PluginFacts("Education", ("libOrthancEducation.so",), "EDUCATION_PLUGIN_ENABLED", defaults=_ENABLE),
    PluginFacts("Wsi", ("libOrthancWSI.so",), "WSI_PLUGIN_ENABLED", "WSI_ENABLED"),
    PluginFacts("Odbc", ("libOrthancOdbcIndex.so", "libOrthancOdbcStorage.so"), "ODBC_PLUGIN_ENABLED", defaults={
        "EnableIndex": True, "EnableStorage": False, "IndexConnectionString": "MUST BE DEFINED",
        "StorageConnectionString": "MUST BE DEFINED",
    }),
    PluginFacts("Tcia", ("libOrthancTcia.so",), "TCIA_PLUGIN_ENABLED", defaults=_ENABLE),
    PluginFacts("Indexer", ("libOrthancIndexer.so",), "INDEXER_PLUGIN_ENABLED", defaults=_ENABLE),
    PluginFacts("Neuro", ("libOrthancNeuro.so",), "NEURO_PLUGIN_ENABLED", defaults=_ENABLE),
    PluginFacts("AzureBlobStorage", ("libOrthancAzureBlobStorage.so",), "AZURE_BLOB_STORAGE_PLUGIN_ENABLED",
                "AZSTOR_ENABLED", defaults={"ConnectionString": "MUST BE DEFINED BY YOU",
                                            "ContainerName": "MUST BE DEFINED BY YOU"}),
    PluginFacts("AwsS3Storage", ("libOrthancAwsS3Storage.so",), "AWS_S3_STORAGE_PLUGIN_ENABLED",
                defaults={"BucketName": "MUST BE DEFINED BY YOU", "Region": "MUST BE DEFINED BY YOU"}),
    PluginFacts("GoogleCloudStorage", ("libOrthancGoogleCloudStorage.so",), "GOOGLE_CLOUD_STORAGE_PLUGIN_ENABLED",
                defaults={"ServiceAccountFile": "MUST BE DEFINED BY YOU", "BucketName": "MUST BE DEFINED BY YOU"}),
    PluginFacts("OrthancExplorer2", ("libOrthancExplorer2.so",), "ORTHANC_EXPLORER_2_ENABLED", on_by_default=True,
                defaults={"Enable": True, "IsDefaultOrthancUI": True}),
    PluginFacts("VolView", ("libOrthancVolView.so",), "VOLVIEW_PLUGIN_ENABLED"),
    PluginFacts("Ohif", ("libOrthancOHIF.so",), "OHIF_PLUGIN_ENABLED"),
    PluginFacts("STL", ("libOrthancSTL.so",), "STL_PLUGIN_ENABLED", defaults=_ENABLE),
    PluginFacts("Java", ("libOrthancJava.so",), "JAVA_PLUGIN_ENABLED", defaults={
        "Enable": True, "Classpath": "MUST BE DEFINED BY YOU", "InitializationClass": "MUST BE DEFINED BY YOU",
    }),
    PluginFacts("PixelsMasker", ("libOrthancPixelsMasker.so",), "PIXELS_MASKER_PLUGIN_ENABLED", defaults=_ENABLE),
)

LEGACY_PLUGIN_VARIABLES = frozenset(p.legacy_variable for p in PLUGINS if p.legacy_variable)
PLUGIN_VARIABLES = frozenset(p.variable for p in PLUGINS if p.variable)
# Every variable name the image reads as deprecated.
DEPRECATED_NAMES = frozenset(LEGACY) | LEGACY_PLUGIN_VARIABLES

EXIT_DEPRECATED = 254  # exit(-2)
EXIT_ERRORS = 255  # exit(-1)
EXIT_NO_USER = 253  # exit(-3)
EXIT_USAGE = 2  # docker-entrypoint.sh: "expects a single parameter"
EXIT_CRASH = 1  # an unhandled Python exception in the generator


@dataclass(frozen=True, slots=True)
class ImageLayout:
    """The image's paths (its Dockerfile and entry point); ``rooted`` moves them under a folder."""

    config_dir: str = "/etc/orthanc"
    secrets_dir: str = "/run/secrets"
    plugins_available: str = "/usr/share/orthanc/plugins-available"
    plugins_dir: str = "/usr/share/orthanc/plugins"
    run_plugins_dir: str = "/run/orthanc/plugins"
    generated_config: str = "/tmp/orthanc.json"
    startup_dir: str = "/startup"
    root: str = ""

    def path(self, image_path: str) -> Path:
        """Where an absolute path of the image is in this layout."""
        if not image_path.startswith("/"):
            raise ValueError(f"not an absolute image path: {image_path!r}")
        return Path(self.root + image_path) if self.root else Path(image_path)

    def rooted(self, root: Path) -> ImageLayout:
        """The same layout under ``root`` (every path prefixed)."""
        return ImageLayout(root=str(root))


class ImageConfigError(Exception):
    """The image would refuse to start; ``status`` is its exit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class GeneratedConfig:
    """What the image's entry point produced."""

    config: dict[str, Any]
    enabled_plugins: list[str]
    linked_libs: list[Path] = field(default_factory=list)
    missing_libs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# -- the rules ----------------------------------------------------------------------------------

# envsubst resolves $0, $1, ... from sys.argv of the process: generateConfiguration.py has no arguments.
GENERATOR_ARGV = ("generateConfiguration.py",)
_SIMPLE = re.compile(r"(?<!\\)\$([A-Za-z0-9_]+)")
_BRACED = re.compile(r"(?<!\\)\$\{([A-Za-z0-9_]+)((:?-)([^}]+))?\}")
_COMMENT_OR_STRING = re.compile(r"//.*?$|/\*.*?\*/|'(?:\\.|[^\\'])*'|\"(?:\\.|[^\\\"])*\"", re.DOTALL | re.MULTILINE)


def envsubst(text: str, environ: Mapping[str, str]) -> str:
    """Replace ``$NAME``, ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}`` as envsubst 0.1.5 does.

    Unset names give the empty string; plain ``$NAME`` forms are replaced first, then braced
    ones; a ``$`` preceded by a backslash is kept. Numeric names are the generator's command-line
    arguments: ``$0`` is ``generateConfiguration.py``, any other is unset.
    """

    def value(name: str, default: str | None) -> str | None:
        try:
            index = int(name)
        except ValueError:
            return environ.get(name, default)
        return GENERATOR_ARGV[index] if index < len(GENERATOR_ARGV) else default

    def simple(match: re.Match[str]) -> str:
        return value(match.group(1), "") or ""

    def braced(match: re.Match[str]) -> str:
        name, spec, operator, default = match.groups()
        if not spec:
            return value(name, "") or ""
        default = _SIMPLE.sub(simple, default)
        if operator == ":-":
            return value(name, None) or default
        found = value(name, None)
        return default if found is None else found

    return _BRACED.sub(braced, _SIMPLE.sub(simple, text))


def strip_comments(text: str) -> str:
    """Remove ``//`` and ``/* */`` comments outside strings (each becomes one space)."""
    return _COMMENT_OR_STRING.sub(lambda m: " " if m.group(0).startswith("/") else m.group(0), text)


def camel_word(token: str) -> str:
    """``QUERY_RETRIEVE_SIZE`` -> ``QueryRetrieveSize`` (each word: first letter kept, rest lower-cased).

    Raises:
        ValueError: an empty word (``__`` splits, so a stray ``_`` at either end); the image crashes.
    """
    words = token.split("_")
    if any(word == "" for word in words):
        raise ValueError(f"empty word in {token!r}: the image's generator fails on it")
    return "".join(word[0] + word[1:].lower() for word in words)


def key_path(name: str) -> tuple[str, ...]:
    """The configuration key an environment variable (or secret file) name sets.

    Raises:
        ValueError: the name is neither ``ORTHANC__…`` nor in the alias or legacy tables.
    """
    if name in ALIASES:
        return tuple(ALIASES[name].split("."))
    if name in LEGACY:
        return tuple(LEGACY[name].split("."))
    if not name.startswith("ORTHANC__"):
        raise ValueError(f"{name} is not a configuration variable of the image")
    tokens = name[len("ORTHANC__"):].split("__")
    first = SECTION_WORDS.get(tokens[0]) if len(tokens) > 1 else None
    return (first or camel_word(tokens[0]), *(camel_word(t) for t in tokens[1:]))


def typed(value: str) -> Any:
    """The value the image stores for a variable: ``json.loads`` of it, or the string itself."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def is_configuration_variable(name: str) -> bool:
    """Whether the image reads ``name`` as a configuration key (not a plugin switch or ``*_SECRET``)."""
    return not name.endswith("_SECRET") and (name.startswith("ORTHANC__") or name in ALIASES or name in LEGACY)


def merge(base: dict[str, Any], added: Mapping[str, Any], overwrite: bool = True) -> None:
    """Merge ``added`` into ``base`` in place: objects key by key, other values replace or are kept.

    Raises:
        TypeError: an object merged onto a value that is not one (the image fails there too).
    """
    for key, value in added.items():
        if isinstance(value, Mapping) and key in base:
            if not isinstance(base[key], dict):
                raise TypeError(f"cannot merge an object into the non-object {key!r}")
            merge(base[key], value, overwrite)
        elif key not in base or overwrite:
            base[key] = copy.deepcopy(value)


def _nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    result: Any = value
    for key in reversed(path):
        result = {key: result}
    return dict(result)


def enabled_plugins(config: Mapping[str, Any], enabled_by_variable: set[str], disabled: set[str]) -> list[str]:
    """The plugins the image enables (rule 4)."""
    names = []
    for plugin in PLUGINS:
        if plugin.needs_variable:
            enabled = plugin.name in enabled_by_variable
        else:
            enabled = plugin.config_section in config or plugin.name in enabled_by_variable
            if plugin.root_setting is not None:
                enabled = enabled or plugin.root_setting in config
        if plugin.on_by_default:
            enabled = True
        if plugin.name in disabled:
            enabled = False
        if enabled:
            names.append(plugin.name)
    return names


def generate(environ: Mapping[str, str], layout: ImageLayout | None = None, link: bool = False) -> GeneratedConfig:
    """Build the configuration as the image's entry point would (rules 1-6 of the module docstring).

    Args:
        environ: the container's environment (order matters only for keys set twice).
        layout: where the image's folders are (default: the image's own paths).
        link: also link the enabled plugins' libraries (rule 6).

    Raises:
        ImageConfigError: the image would exit; ``status`` is its exit status.
    """
    layout = layout or ImageLayout()
    config: dict[str, Any] = {}
    errors: list[str] = []
    folders = (layout.config_dir, layout.secrets_dir)
    files = [path for folder in folders for path in sorted(layout.path(folder).glob("*.json"))]
    for path in files:
        try:
            loaded = json.loads(strip_comments(envsubst(path.read_text(encoding="utf-8"), environ)))
        except ValueError as exc:
            # The image logs the error, then merges a variable the failed parse never set: it
            # crashes on the first file (NameError, exit status 1) or merges the previous file again.
            raise ImageConfigError(EXIT_CRASH, f"Unable to parse Json file '{path}'; check syntax ({exc})") from exc
        merge(config, loaded)
    deprecated: list[str] = []
    secret_names: dict[str, str] = {}
    by_variable: set[str] = set()
    disabled: set[str] = set()
    for name, value in environ.items():
        if name == "ORTHANC_JSON":
            try:
                merge(config, json.loads(strip_comments(value)))
            except ValueError:
                errors.append("Unable to parse the ORTHANC_JSON env-var")
        elif name.endswith("_SECRET"):
            secret_names[value] = name[: -len("_SECRET")]
        elif name.startswith("ORTHANC__") or name in ALIASES or name in LEGACY:
            if name in LEGACY:
                deprecated.append(name)
            merge(config, _nested(key_path(name), typed(value)))
        else:
            for plugin in PLUGINS:
                if name in (plugin.variable, plugin.legacy_variable):
                    (disabled if value == "false" else by_variable).add(plugin.name)
                    if name == plugin.legacy_variable:
                        deprecated.append(name)
    warnings = _merge_secrets(config, layout, secret_names, deprecated)
    defaults = copy.deepcopy(dict(ORTHANC_DEFAULTS))
    defaults["Plugins"] = [str(layout.path(p)) for p in defaults["Plugins"]]
    merge(config, defaults, overwrite=False)
    names = enabled_plugins(config, by_variable, disabled)
    for plugin in PLUGINS:
        if plugin.name in names and plugin.defaults:
            merge(config, {plugin.config_section: plugin.defaults}, overwrite=False)
    result = GeneratedConfig(config=config, enabled_plugins=names, warnings=warnings)
    if link:
        errors += _link_plugins(result, layout)
    if deprecated:
        raise ImageConfigError(EXIT_DEPRECATED, "deprecated settings: " + ", ".join(deprecated))
    if errors:
        raise ImageConfigError(EXIT_ERRORS, "; ".join(errors))
    password = environ.get("ORTHANC_PASSWORD")
    if password:
        users = config.get("RegisteredUsers")
        if not users:
            config["RegisteredUsers"] = {"orthanc": password}
        else:
            users["orthanc"] = password
    open_to_all = config.get("RemoteAccessAllowed", True) and config.get("AuthenticationEnabled", True)
    if open_to_all and not config.get("RegisteredUsers"):
        raise ImageConfigError(EXIT_NO_USER, "HTTP authentication is enabled and Remote Access is allowed, "
                                             "but no user is declared")
    return result


def _merge_secrets(
    config: dict[str, Any], layout: ImageLayout, named: Mapping[str, str], deprecated: list[str]
) -> list[str]:
    warnings: list[str] = []
    secrets = layout.path(layout.secrets_dir)
    for path in sorted(secrets.glob("*")) if secrets.is_dir() else []:
        if not path.is_file():
            continue
        if path.name in named:
            target = named[path.name]
        elif path.name.startswith("ORTHANC__") or path.name in ALIASES or path.name in LEGACY:
            target = path.name
            if target in LEGACY:
                deprecated.append(target)
        else:
            continue
        try:
            keys = key_path(target)
        except ValueError:
            warnings.append(f"secret won't be read: {target}")
            continue
        merge(config, _nested(keys, typed(path.read_text(encoding="utf-8").rstrip("\n"))))
    return warnings


def _link_plugins(result: GeneratedConfig, layout: ImageLayout) -> list[str]:
    errors: list[str] = []
    run_plugins = layout.path(layout.run_plugins_dir)
    target_dir = run_plugins if run_plugins.is_dir() else layout.path(layout.plugins_dir)
    for plugin in PLUGINS:
        if plugin.name not in result.enabled_plugins:
            continue
        for lib in plugin.libs:
            source = layout.path(layout.plugins_available) / lib
            target = target_dir / lib
            if target.is_file():
                result.linked_libs.append(target)
                continue  # a restarted container keeps the links it made
            if not source.exists():
                result.missing_libs.append(lib)
                continue
            try:
                try:
                    os.link(source, target)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    shutil.copy(source, target)
            except OSError as exc:
                errors.append(f"failed to install {lib} file: {exc}")
                continue
            result.linked_libs.append(target)
    return errors


def write(result: GeneratedConfig, layout: ImageLayout) -> Path:
    """Write the generated configuration where the image does (``/tmp/orthanc.json``)."""
    path = layout.path(layout.generated_config)
    path.write_text(json.dumps(result.config, indent=2), encoding="utf-8")
    return path


def lookup(config: Mapping[str, Any], dotted: str) -> Any:
    """``config["A"]["B"]`` for ``"A.B"``; ``KeyError`` naming the key when absent."""
    value: Any = config
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value:
            raise KeyError(dotted)
        value = value[key]
    return value


def variables_setting(names: Iterable[str]) -> dict[str, str]:
    """``{variable: dotted key}`` for the configuration variables among ``names``."""
    return {name: ".".join(key_path(name)) for name in names if is_configuration_variable(name)}
