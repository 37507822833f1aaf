#ifndef CONNPOOL_VERSION_HPP
#define CONNPOOL_VERSION_HPP

/// \file
/// connpool's version. The CMake project, the package files and CHANGELOG.md take it from here.
/// Releases follow semantic versioning: within one major version, a newer minor or patch release
/// builds and behaves as documented for every program the older one served.

/// The major version: changes when the public API breaks.
#define CONNPOOL_VERSION_MAJOR 1
/// The minor version: new features, nothing breaks.
#define CONNPOOL_VERSION_MINOR 0
/// The patch version: fixes only.
#define CONNPOOL_VERSION_PATCH 0
/// The version as one number, MAJOR * 10000 + MINOR * 100 + PATCH (1.0.0 is 10000), for `#if`.
#define CONNPOOL_VERSION (CONNPOOL_VERSION_MAJOR * 10000 + CONNPOOL_VERSION_MINOR * 100 + CONNPOOL_VERSION_PATCH)
/// The version as a string, "MAJOR.MINOR.PATCH".
#define CONNPOOL_VERSION_STRING "1.0.0"

#endif
