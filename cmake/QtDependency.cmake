# qt_require_pkg(PREFIX module debian-package)
#
# Finds a pkg-config module and stops with a message that names the Debian
# package to install when it is missing. Sets PREFIX_INCLUDE_DIRS,
# PREFIX_LINK_LIBRARIES and PREFIX_VERSION.
function(qt_require_pkg prefix module package)
  if(NOT PKG_CONFIG_FOUND)
    message(FATAL_ERROR "pkg-config is missing: run tools/install-deps.sh (apt-get install pkg-config)")
  endif()
  pkg_check_modules(${prefix} QUIET ${module})
  if(NOT ${prefix}_FOUND)
    message(FATAL_ERROR
      "qtune needs ${module}, which was not found.\n"
      "Install the Debian package '${package}' (apt-get install ${package}), "
      "or run tools/install-deps.sh, which installs every dependency.")
  endif()
  set(${prefix}_INCLUDE_DIRS "${${prefix}_INCLUDE_DIRS}" PARENT_SCOPE)
  set(${prefix}_LINK_LIBRARIES "${${prefix}_LINK_LIBRARIES}" PARENT_SCOPE)
  set(${prefix}_VERSION "${${prefix}_VERSION}" PARENT_SCOPE)
endfunction()
