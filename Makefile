# qtune: a thin front over CMake. The two commands that matter:
#   make test   install missing Debian packages, configure, build (warnings are
#               errors) and run every test with CTest
#   make demo   build and run the demo (tools/demo.sh)
BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all deps configure build test test-gpu sanitize sanitize-thread demo format clean

all: build

deps:
	@tools/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -DQT_WERROR=ON $(CMAKE_FLAGS)

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	@ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# Only the tests labelled gpu (they skip with exit code 77 without a device).
test-gpu: build
	@ctest --test-dir $(BUILD) --output-on-failure -L gpu

# The test suite under AddressSanitizer and UndefinedBehaviorSanitizer.
sanitize:
	@$(MAKE) test BUILD=build-sanitize \
	  CMAKE_FLAGS="-DCMAKE_BUILD_TYPE=Debug -DQT_CUDA=OFF -DQT_SANITIZE_ADDRESS=ON -DQT_SANITIZE_UNDEFINED=ON"

# The tests of the code that runs threads (batch preparation and its
# prefetching, runs on the fake device) under ThreadSanitizer, and the
# emulated fused attention kernels: there it reports a lane that reads
# shared memory another lane wrote without a barrier between.
sanitize-thread:
	@$(MAKE) build BUILD=build-tsan \
	  CMAKE_FLAGS="-DCMAKE_BUILD_TYPE=Debug -DQT_CUDA=OFF -DQT_SANITIZE_THREAD=ON"
	@ctest --test-dir build-tsan --output-on-failure \
	  -R '^test_(data|cpu_parallel|run_backend|emulated_attention|emulated_attention_exact|emulated_layernorm|emulated_colsum|emulated_optim)$$'

demo: build
	@tools/demo.sh $(BUILD)/qtune

format:
	@clang-format -i $$(git ls-files '*.c' '*.h' '*.cu')

clean:
	@rm -rf $(BUILD) build-sanitize build-tsan
