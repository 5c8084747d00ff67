/*
 * A minimal Orthanc plugin that consumes Orthanc's audit logs (OrthancPluginRegisterAuditLogHandler,
 * Orthanc SDK 1.12.9+), as the PostgreSQL plugin's audit logs do: each log it receives becomes one
 * tab-separated line (source plugin, user, resource type, resource id, action, log data) in the
 * file named by the environment variable AUDIT_LOG_CONSUMER_FILE. Built and loaded by
 * tests/integration/test_orthanc_audit_logs.py only.
 */
#include <orthanc/OrthancCPlugin.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static FILE* output_ = NULL;
static pthread_mutex_t lock_ = PTHREAD_MUTEX_INITIALIZER;

static OrthancPluginErrorCode OnAuditLog(const char* sourcePlugin, const char* userId,
                                         OrthancPluginResourceType resourceType, const char* resourceId,
                                         const char* action, const void* logData, uint32_t logDataSize)
{
  pthread_mutex_lock(&lock_);
  if (output_ != NULL)
  {
    fprintf(output_, "%s\t%s\t%d\t%s\t%s\t", sourcePlugin, userId, (int) resourceType, resourceId, action);
    fwrite(logData, 1, logDataSize, output_);
    fputc('\n', output_);
    fflush(output_);
  }
  pthread_mutex_unlock(&lock_);
  return OrthancPluginErrorCode_Success;
}

ORTHANC_PLUGINS_API int32_t OrthancPluginInitialize(OrthancPluginContext* context)
{
  const char* path = getenv("AUDIT_LOG_CONSUMER_FILE");
  if (path == NULL || (output_ = fopen(path, "a")) == NULL)
  {
    return -1;
  }
  return OrthancPluginRegisterAuditLogHandler(context, OnAuditLog) == OrthancPluginErrorCode_Success ? 0 : -1;
}

ORTHANC_PLUGINS_API void OrthancPluginFinalize(void)
{
  pthread_mutex_lock(&lock_);
  if (output_ != NULL)
  {
    fclose(output_);
    output_ = NULL;
  }
  pthread_mutex_unlock(&lock_);
}

ORTHANC_PLUGINS_API const char* OrthancPluginGetName(void)
{
  return "audit-log-consumer";
}

ORTHANC_PLUGINS_API const char* OrthancPluginGetVersion(void)
{
  return "1.0";
}
