# ctest driver: use connpool as a user would, from an install and from its Debian package.
#   1. cmake --install into a fresh prefix; find_package(connpool 1.0 CONFIG) builds and runs the
#      consumer; asking for 1.1 or 2.0 is refused (the version check);
#   2. pkg-config (connpool, or connpool-boost) compiles and runs the same consumer;
#   3. cpack -G DEB; the package's fields are checked; it is unpacked (dpkg -x) into a clean
#      directory, and 1 and 2 are repeated against it.
#   Each with standalone Asio and, where Boost is installed, Boost.Asio; asking for the other Asio
#   in a project that has found connpool already fails with a message.
# Variables: SOURCE_DIR, BUILD_DIR, WORK_DIR, GENERATOR, CXX, VERSION, HAVE_BOOST.
file(REMOVE_RECURSE ${WORK_DIR})
function(step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}")
  endif()
endfunction()
function(output var)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err
                  OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  set(${var} "${out}" PARENT_SCOPE)
endfunction()
# Both Asios where Boost is here (the package's default is standalone Asio).
set(modes standalone)
if(HAVE_BOOST)
  list(APPEND modes boost)
else()
  message(STATUS "SKIPPED the Boost.Asio consumer: no Boost 1.74 here (Debian package libboost-dev)")
endif()

function(consume prefix tag)
  foreach(mode ${modes})
    if(mode STREQUAL "boost")
      set(on ON)
      set(other OFF)
      set(pc connpool-boost)
      set(expect -DCONSUMER_EXPECTS_BOOST)
    else()
      set(on OFF)
      set(other ON)
      set(pc connpool)
      set(expect "")
    endif()
    message(STATUS "[${tag}, ${mode}] find_package(connpool 1.0 CONFIG) from ${prefix}")
    set(b ${WORK_DIR}/${tag}-${mode}-cmake)
    step(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${b} -G ${GENERATOR} -DCMAKE_CXX_COMPILER=${CXX}
         -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release -DCONNPOOL_USE_BOOST_ASIO=${on})
    step(${CMAKE_COMMAND} --build ${b})
    step(${b}/consumer)
    foreach(refused 1.1 2.0)
      execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/${tag}-want-${refused}
                      -G ${GENERATOR} -DCMAKE_PREFIX_PATH=${prefix} -DCONNPOOL_WANT=${refused}
                      -DCONNPOOL_USE_BOOST_ASIO=${on}
                      RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
      if(rc EQUAL 0 OR NOT err MATCHES "version")
        message(FATAL_ERROR "find_package(connpool ${refused}) should be refused by ${VERSION}:\n${out}\n${err}")
      endif()
    endforeach()
    message(STATUS "[${tag}, ${mode}] find_package(connpool 1.1) and (2.0) refused, as they should be")
    if(HAVE_BOOST)
      execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/${tag}-switch-${mode}
                      -G ${GENERATOR} -DCMAKE_PREFIX_PATH=${prefix} -DCONNPOOL_USE_BOOST_ASIO=${on}
                      -DCONNPOOL_SWITCH_TO=${other} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
      if(rc EQUAL 0 OR NOT err MATCHES "already found")
        message(FATAL_ERROR "asking for the other Asio after ${mode} should fail:\n${out}\n${err}")
      endif()
      message(STATUS "[${tag}, ${mode}] asking for the other Asio next is refused, as it should be")
    endif()

    message(STATUS "[${tag}, ${mode}] pkg-config ${pc}")
    set(ENV{PKG_CONFIG_PATH} ${prefix}/share/pkgconfig)
    output(version pkg-config --modversion ${pc})
    if(NOT version STREQUAL VERSION)
      message(FATAL_ERROR "pkg-config says ${pc} is ${version}, the project is ${VERSION}")
    endif()
    step(pkg-config --atleast-version=1.0 ${pc})
    output(cflags pkg-config --cflags ${pc})
    output(libs pkg-config --libs ${pc})
    separate_arguments(cflags UNIX_COMMAND "${cflags}")
    separate_arguments(libs UNIX_COMMAND "${libs}")
    step(${CXX} -std=c++17 ${cflags} ${expect} ${SOURCE_DIR}/tests/consumer/main.cpp -o ${WORK_DIR}/${tag}-${pc}
         ${libs})
    step(${WORK_DIR}/${tag}-${pc})
  endforeach()
endfunction()

# 1, 2: from an install.
step(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix)
consume(${WORK_DIR}/prefix install)

# 3: from the Debian package, unpacked into a clean directory.
find_program(DPKG_DEB dpkg-deb)
if(NOT DPKG_DEB)
  message(STATUS "SKIPPED the Debian package: no dpkg-deb here")
  return()
endif()
step(cpack -G DEB --config ${BUILD_DIR}/CPackConfig.cmake -B ${WORK_DIR}/deb)
file(GLOB debs ${WORK_DIR}/deb/*.deb)
list(LENGTH debs n)
if(NOT n EQUAL 1)
  message(FATAL_ERROR "cpack made ${n} packages: ${debs}")
endif()
foreach(field Package=libconnpool-dev Version=${VERSION} Architecture=all)
  string(REPLACE "=" ";" kv ${field})
  list(GET kv 0 key)
  list(GET kv 1 want)
  output(got dpkg-deb -f ${debs} ${key})
  if(NOT got STREQUAL want)
    message(FATAL_ERROR "the package's ${key} is '${got}', want '${want}'")
  endif()
endforeach()
output(depends dpkg-deb -f ${debs} Depends)
if(NOT depends MATCHES "libasio-dev" OR NOT depends MATCHES "libboost-dev")
  message(FATAL_ERROR "the package's Depends is '${depends}'")
endif()
message(STATUS "[deb] ${debs}: libconnpool-dev ${VERSION}, all, Depends: ${depends}")
step(dpkg-deb -x ${debs} ${WORK_DIR}/root)
consume(${WORK_DIR}/root/usr deb)
