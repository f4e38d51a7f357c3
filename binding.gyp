{
  "targets": [
    {
      "target_name": "sluice",
      "sources": [
        "native/addon.cc",
        "native/engine/backlog.cc",
        "native/engine/binding.cc",
        "native/engine/engine.cc",
        "native/engine/frame_cursor.cc",
        "native/engine/handshake.cc",
        "native/engine/http_head.cc",
        "native/engine/inflate_meter.cc",
        "native/engine/listener.cc",
        "native/engine/tls.cc",
        "native/engine/utf8_stream.cc",
        "native/envelope.cc",
        "native/frame.cc",
        "native/frame_run.cc",
        "native/mask.cc",
        "native/pool.cc",
        "native/tunnel/binding.cc",
        "native/tunnel/mux.cc",
        "native/tunnel/yamux_reader.cc",
        "native/utf8.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_DISABLE_CPP_EXCEPTIONS", "NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-O2"],
      "cflags_cc!": ["-std=gnu++17", "-O2"],
      "cflags": ["-fvisibility=hidden", "-Wall", "-Wextra", "-Wpedantic"],
      "cflags_cc": ["-std=c++17", "-O3", "-fno-exceptions", "-fvisibility-inlines-hidden"],
      "xcode_settings": {
        "GCC_SYMBOLS_PRIVATE_EXTERN": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "OTHER_CPLUSPLUSFLAGS": ["-O3", "-Wall", "-Wextra", "-Wpedantic"]
      },
      "msvs_settings": {
        "VCCLCompilerTool": { "ExceptionHandling": 0, "AdditionalOptions": ["/O2"] }
      }
    }
  ]
}
