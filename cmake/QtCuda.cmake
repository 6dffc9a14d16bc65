# CUDA backend configuration.
#
# QT_CUDA=AUTO builds the CUDA code when CMake's CUDAToolkit finds the toolkit
# and a CUDA compiler (nvcc) is available; ON requires both; OFF skips them.
# The CUDA code compiles and links on machines without a GPU: whether a device
# is present is decided at run time (tests labelled `gpu` then skip).
set(QT_CUDA_ENABLED OFF)
set(QT_CUDA_SUMMARY "off")

if(NOT QT_CUDA STREQUAL "OFF")
  # nvcc is often installed outside PATH, in the toolkit's default location.
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    get_filename_component(_qt_cuda_bin "${CMAKE_CUDA_COMPILER}" DIRECTORY)
    get_filename_component(_qt_cuda_root "${_qt_cuda_bin}" DIRECTORY)
    set(CUDAToolkit_ROOT "${_qt_cuda_root}")
    find_package(CUDAToolkit QUIET)
  endif()
  if(CMAKE_CUDA_COMPILER AND CUDAToolkit_FOUND)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # Ampere and Hopper; override with -DCMAKE_CUDA_ARCHITECTURES=...
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)
    set(QT_CUDA_ENABLED ON)
    set(QT_CUDA_SUMMARY "on: CUDA ${CUDAToolkit_VERSION}, nvcc ${CMAKE_CUDA_COMPILER}, archs ${CMAKE_CUDA_ARCHITECTURES}")
    # cuDNN's headers, for its types: the library itself is loaded at run
    # time where the machine has it (src/finetune/cuda/qt_cuda_cudnn.cu).
    find_path(QT_CUDNN_INCLUDE_DIR cudnn.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
    if(QT_CUDNN_INCLUDE_DIR)
      string(APPEND QT_CUDA_SUMMARY ", cuDNN headers ${QT_CUDNN_INCLUDE_DIR}")
    else()
      string(APPEND QT_CUDA_SUMMARY ", no cuDNN headers (convolutions on im2col and cuBLAS)")
    endif()
  elseif(QT_CUDA STREQUAL "ON")
    message(FATAL_ERROR "QT_CUDA=ON but the CUDA toolkit or nvcc was not found. "
      "Install the CUDA toolkit (nvcc in PATH or /usr/local/cuda/bin) or configure with -DQT_CUDA=OFF.")
  else()
    set(QT_CUDA_SUMMARY "off (toolkit or nvcc not found)")
  endif()
endif()

# Links the CUDA runtime, cuBLAS and dlopen (for cuDNN) into a target that
# has .cu sources.
function(qt_cuda_configure_target target)
  target_link_libraries(${target} PUBLIC CUDA::cudart CUDA::cublas CUDA::cublasLt ${CMAKE_DL_LIBS})
  if(QT_CUDNN_INCLUDE_DIR)
    set_property(SOURCE ${CMAKE_CURRENT_SOURCE_DIR}/src/finetune/cuda/qt_cuda_cudnn.cu APPEND
      PROPERTY COMPILE_DEFINITIONS QT_HAVE_CUDNN_H=1)
    target_include_directories(${target} PRIVATE ${QT_CUDNN_INCLUDE_DIR})
  endif()
  set_target_properties(${target} PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
  # -fno-exceptions: qtune's CUDA code is C behind extern "C" and throws
  # nothing. Without it, every .cu with a kernel launch defines the weak
  # symbol DW.ref.__gxx_personality_v0, which tests/check-symbols.sh rejects.
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-fno-exceptions>)
endfunction()
