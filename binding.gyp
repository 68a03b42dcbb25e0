{
  "targets": [
    {
      "target_name": "kvm_gmem",
      "sources": [
        "native/addon.cc",
        "native/args.cc",
        "native/fd.cc",
        "native/system.cc",
        "native/vm.cc",
        "native/private_fd.cc",
        "native/guest_memfd.cc",
        "native/fdpass.cc",
        "native/mapping.cc",
        "native/guarded.cc",
        "native/mm.cc",
        "native/vcpu.cc",
        "native/cpuid.cc",
        "native/vcpu_runner.cc",
        "native/dup.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "dependencies": ["guest_images"]
    },
    {
      "target_name": "guest_images",
      "type": "none",
      "sources": [
        "native/guest/hello.S",
        "native/guest/port_loop.S",
        "native/guest/memtest.S",
        "native/guest/spin.S",
        "native/guest/rendezvous.S",
        "native/guest/devices.S",
        "native/guest/fault.S",
        "native/guest/halt.S",
        "native/guest/upgrade.S"
      ],
      "rules": [
        {
          "rule_name": "guest_image",
          "extension": "S",
          "inputs": ["native/guest/ucall.h", "native/guest/mkimage.sh"],
          "outputs": ["<(PRODUCT_DIR)/guest/<(RULE_INPUT_ROOT).bin"],
          "action": [
            "sh", "native/guest/mkimage.sh", "<(RULE_INPUT_PATH)",
            "<(INTERMEDIATE_DIR)/<(RULE_INPUT_ROOT).o", "<(PRODUCT_DIR)/guest/<(RULE_INPUT_ROOT).bin"
          ],
          "message": "Assembling guest image <(RULE_INPUT_ROOT).bin",
          "process_outputs_as_sources": 0
        }
      ]
    }
  ]
}
