"""The ``qt-ros`` verbs, one module per verb (benchmarks included): each parses its options and
reports; the work lives in the library packages. ``qt_ros.cli`` dispatches to them."""
