"""What the tests share, and the benchmarks reuse: random weights of the real shapes in the real file formats
(adapter_files, host_models, unet_configs), the host's UNets and diffusers' beside them (host_unet, unet_pairs),
the original repository's training maths (reference_train), servers and graphs for the workflow tests
(workflow_servers, plus_graphs, soak_prompts, hostile_convert_requests), and importing this repository as
``ipadapter_ext`` (package_alias). Nothing is re-exported here: import a module by its path.
"""
