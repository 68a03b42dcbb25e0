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
        "native/guest_memfd.cc",
        "native/mapping.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
