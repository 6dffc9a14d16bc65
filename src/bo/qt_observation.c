/*
 * qt_observation.c - names of observation statuses.
 */
#include "bo/qt_bo.h"

const char *qt_obs_status_name(qt_obs_status status) {
  switch (status) {
    case QT_OBS_STATUS_OK: return "ok";
    case QT_OBS_STATUS_DIVERGED: return "diverged";
    case QT_OBS_STATUS_FAILED: return "failed";
    case QT_OBS_STATUS_EXHAUSTED: return "exhausted";
  }
  return "unknown";
}
