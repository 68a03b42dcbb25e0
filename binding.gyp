{
  "targets": [
    {
      "target_name": "kvm_gmem",
      "sources": [
        "native/addon.cc",
        "native/util/args.cc",
        "native/util/errors.cc",
        "native/util/limits.cc",
        "native/util/thread.cc",
        "native/core/fd.cc",
        "native/core/private_fd.cc",
        "native/kvm/system.cc",
        "native/kvm/vm.cc",
        "native/kvm/guest_memfd.cc",
        "native/kvm/vcpu.cc",
        "native/kvm/cpuid.cc",
        "native/kvm/vcpu_runner.cc",
        "native/mm/mapping.cc",
        "native/mm/guarded.cc",
        "native/mm/calls.cc",
        "native/ipc/fdpass.cc",
        "native/ipc/fd_watch.cc"
      ],
      "include_dirs": ["native", "<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": [
        "NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_CPP_EXCEPTIONS_ALL", "NODE_ADDON_API_DISABLE_DEPRECATED",
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
        "_FILE_OFFSET_BITS=64", "_LARGEFILE_SOURCE", "__STDC_FORMAT_MACROS", "_GLIBCXX_USE_CXX11_ABI=1"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": [
        "-std=c++17", "-O3", "-fno-omit-frame-pointer", "-fno-rtti", "-fexceptions", "-pthread", "-m64",
        "-Wall", "-Wextra", "-Wno-unused-parameter"
      ],
      "ldflags": ["-pthread", "-rdynamic", "-m64"],
      "dependencies": ["guest_images"]
    },
    {
      "target_name": "guest_images",
      "type": "none",
      "sources": [
        "guest/hello.S",
        "guest/port_loop.S",
        "guest/memtest.S",
        "guest/spin.S",
        "guest/rendezvous.S",
        "guest/devices.S",
        "guest/fault.S",
        "guest/halt.S",
        "guest/upgrade.S",
        "guest/readpages.S",
        "guest/private_mem_conversions.S"
      ],
      "rules": [
        {
          "rule_name": "guest_image",
          "extension": "S",
          "inputs": ["guest/ucall.h", "guest/mkimage.sh"],
          "outputs": ["<(PRODUCT_DIR)/guest/<(RULE_INPUT_ROOT).bin"],
          "action": [
            "sh", "guest/mkimage.sh", "<(RULE_INPUT_PATH)",
            "<(INTERMEDIATE_DIR)/<(RULE_INPUT_ROOT).o", "<(PRODUCT_DIR)/guest/<(RULE_INPUT_ROOT).bin"
          ],
          "message": "Assembling guest image <(RULE_INPUT_ROOT).bin",
          "process_outputs_as_sources": 0
        }
      ]
    }
  ]
}
