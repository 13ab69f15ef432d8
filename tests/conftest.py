"""Shared fixtures. Op-matrix helpers (cases, domains, layouts) live in ``_opcases.py``."""

import sys

import numpy as np
import pytest

import nodegrad as ng


# the longest cases of tests whose other cases stay in the default run (or whose guarantee a
# shorter test there also checks): they run with ``pytest -m slow``
_SLOW_CASES = {
    "tests/test_distributed.py::test_killed_rank_ends_the_job_and_the_run_resumes",
    "tests/test_distributed.py::test_mid_epoch_checkpoint_resumes_on_another_number_of_ranks"
    "[before2-after2]",
    "tests/test_distributed.py::test_ranks_match_one_process_on_the_full_batch[4]",
    "tests/test_torch_opinfo.py::test_opinfo_samples_match_pytorch[grid_sampler_3d-float64]",
    "tests/test_torch_opinfo.py::test_opinfo_samples_match_pytorch[grid_sampler_3d-float16]",
    "tests/test_examples.py::test_example_runs_and_draws_its_figures[lottery_ticket_mnist1d.py]",
    "tests/test_examples.py::test_example_runs_and_draws_its_figures[init_activations.py]",
    "tests/test_ports_gpt.py::test_nanogpt_training_matches_torch[True-False-tanh-True]",
    "tests/test_memory.py::test_memory_flat_over_training[grad]",
    "tests/test_benchmarks.py::test_workload_runs_and_frameworks_agree[J5]",
}
# the slowest tests of the default run on a 2-core AVX2 machine (in two rounds of
# ``--durations``: 3.5 s or more, then 1.5 s or more), so that the default run stays under 15
# minutes on it; ``pytest -m slow`` runs them
_SLOW_CASES |= {
    "tests/test_aliasing_fuzz.py::test_random_programs_agree_with_pytorch[0]",
    "tests/test_aliasing_fuzz.py::test_the_generator_covers_every_handle_and_write",
    "tests/test_autodiff.py::test_graph_freed_after_backward",
    "tests/test_backend.py::test_halves_keep_the_callers_error_state_and_threads",
    "tests/test_benchmarks.py::test_an_eager_floor_is_warmed_up_as_the_nodegrad_workers_are",
    "tests/test_benchmarks.py::test_workload_runs_and_frameworks_agree[J3]",
    "tests/test_benchmarks.py::test_workload_runs_and_frameworks_agree[J8]",
    "tests/test_benchmarks.py::test_workload_runs_and_frameworks_agree[W9]",
    "tests/test_cli.py::test_default_run_directory_never_collides",
    "tests/test_cli.py::test_device_run_resume_evaluate_export[stand-in]",
    "tests/test_cli.py::test_existing_dir_other_model_and_missing_run",
    "tests/test_cli.py::test_resume_without_checkpoint_and_where_a_resume_continues",
    "tests/test_cli_diagnose.py::test_steps_record_gradient_flow",
    "tests/test_data_datasets.py::test_mnist1d_generates_offline_into_the_cache",
    "tests/test_data_workers.py::test_in_order_false_does_not_wait_for_a_slow_batch_and_resumes_exactly",
    "tests/test_data_workers.py::test_worker_batches_equal_main_process_batches_bit_for_bit",
    "tests/test_data_workers.py::test_workers_end_with_the_epoch_the_iterator_or_the_loader",
    "tests/test_diagnostics_stats.py::test_plots_write_pngs",
    "tests/test_distributed.py::test_single_process_fallback_runs_without_mpi4py",
    "tests/test_distributions.py::test_vae_loss_trains_under_jit_with_fresh_noise",
    "tests/test_docs.py::test_doc_page_python_blocks_run_in_order[diagnostics.md]",
    "tests/test_docs.py::test_doc_page_python_blocks_run_in_order[jit.md]",
    "tests/test_docs.py::test_fit_1d_regression_example_learns",
    "tests/test_examples.py::test_example_runs_and_draws_its_figures[double_descent_mnist1d.py]",
    "tests/test_examples.py::test_example_runs_and_draws_its_figures[transfer_learning.py]",
    "tests/test_fixes_cli_train.py::test_python_m_nodegrad_config_error_exit_status",
    "tests/test_fixes_special_values.py::test_relu_and_threshold_keep_a_nan_and_its_gradient_like_pytorch_at_every_length[relu]",
    "tests/test_fixes_train_data.py::test_cli_early_stopping_saves_and_reports_the_best_weights",
    "tests/test_flex_attention.py::test_gqa",
    "tests/test_flex_attention.py::test_sliding_window_per_batch_and_head_mask",
    "tests/test_gradcheck_matrix.py::test_gradcheck[complex_lu-3d]",
    "tests/test_gradcheck_matrix.py::test_gradcheck[complex_lu-size1]",
    "tests/test_gradcheck_matrix.py::test_gradcheck_second_order[scan-noncontig]",
    "tests/test_import_layers.py::test_engine_and_ops_have_no_import_circle",
    "tests/test_jit.py::test_cli_train_jit_gives_the_same_weights",
    "tests/test_jit_differentiable.py::test_training_a_jitted_model_equals_eager[dtype0-cnn]",
    "tests/test_jit_differentiable.py::test_training_a_jitted_model_equals_eager[dtype1-cnn]",
    "tests/test_jit_loops.py::test_a_gru_trains_under_jit_as_eagerly[False]",
    "tests/test_jit_loops.py::test_kernels_match_the_eager_primitives[2-2-3-1]",
    "tests/test_jit_loops.py::test_loops_import_numba_as_a_fused_group_does",
    "tests/test_jit_passes.py::test_fused_gradients_match_within_tolerance",
    "tests/test_jit_passes.py::test_fused_jit_matches_eager_on_every_case[multilabel_soft_margin_loss]",
    "tests/test_jit_passes.py::test_fused_sums_propagate_nan_and_inf_as_numpy_does[float32]",
    "tests/test_jit_passes.py::test_kernels_over_whole_arrays_run_as_one_axis_in_any_layout",
    "tests/test_jit_passes.py::test_one_slow_op_is_a_kernel_only_on_enough_elements",
    "tests/test_jit_passes.py::test_sums_over_axes_fuse_within_tolerance[shape5-1-False-float32]",
    "tests/test_jit_ports_functional.py::test_jit_matches_eager[jit_of_grad_of_grad-float32-fused]",
    "tests/test_jit_ports_functional.py::test_jit_matches_eager[per_example_grads_dpsgd-float32-fused]",
    "tests/test_jit_ports_functional.py::test_matches_jax_float64[static_args_change_between_calls]",
    "tests/test_jit_ports_genrl.py::test_ppo_epochs_of_minibatches[unfused-categorical]",
    "tests/test_jit_ports_transformer.py::test_nanogpt_train_loop[sdpa-exact-fused]",
    "tests/test_jit_ports_transformer.py::test_split_gradient_joins_its_pieces_with_eager_bits[fused]",
    "tests/test_jit_ports_vision.py::test_augmentation_all_dtypes_fused[float32-True]",
    "tests/test_jit_real_steps.py::test_batchnorm_train_eval_switch[float32-fused]",
    "tests/test_jit_real_steps.py::test_gan_two_optimisers[float32-fused]",
    "tests/test_jit_real_steps.py::test_small_cnn[unfused]",
    "tests/test_jit_vmath.py::test_value_and_grad_of_a_tanh_sin_chain_within_tolerance",
    "tests/test_lax.py::test_jit_scan_fuses_its_body_and_equals_eager[float32]",
    "tests/test_lax.py::test_jit_scan_fuses_its_body_and_equals_eager[float64]",
    "tests/test_lax.py::test_recurrent_layers_under_jit_use_one_scan[LSTM]",
    "tests/test_lax.py::test_recurrent_layers_with_fused_bodies_equal_eager_float64[LSTM]",
    "tests/test_lax.py::test_scan_gradcheck_float64[True]",
    "tests/test_lax_control.py::test_switch_clamps_the_index_like_jax",
    "tests/test_lax_control.py::test_vmap_cond_selects_per_example_or_stays_a_cond",
    "tests/test_memory.py::test_dropping_the_output_frees_every_node",
    "tests/test_memory.py::test_per_example_gradients_freed_by_reference_counting",
    "tests/test_ops_products.py::test_jit_and_vmap_give_eager_values[corrcoef]",
    "tests/test_ops_products.py::test_jit_and_vmap_give_eager_values[gradient]",
    "tests/test_ops_products.py::test_jit_and_vmap_give_eager_values[renorm]",
    "tests/test_ports_continual.py::test_compiled_ewc_step_and_encoder",
    "tests/test_ports_data.py::test_worker_init_fn_and_persistent_workers_as_torch",
    "tests/test_ports_data.py::test_worker_timeout_raises_as_torch",
    "tests/test_ports_jax.py::test_program_matches_jax[array_names]",
    "tests/test_ports_jax.py::test_program_matches_jax[branches]",
    "tests/test_ports_jax.py::test_program_matches_jax[custom_rules]",
    "tests/test_ports_jax.py::test_program_matches_jax[jacobians]",
    "tests/test_ports_jax.py::test_program_matches_jax[mlp_adam]",
    "tests/test_ports_jax.py::test_program_matches_jax[rnn_scan]",
    "tests/test_ports_jax.py::test_program_matches_jax[static_args_and_remat]",
    "tests/test_ports_jax_idioms.py::test_program_matches_jax[minibatch_epochs]",
    "tests/test_ports_jax_idioms.py::test_program_matches_jax[optax_style_training]",
    "tests/test_tensorboard.py::test_importing_nodegrad_does_not_import_tensorboardx",
    "tests/test_torch_moduleinfo.py::test_moduleinfo_samples_match_pytorch[CTCLoss-eval]",
    "tests/test_torch_moduleinfo.py::test_moduleinfo_samples_match_pytorch[CTCLoss-train]",
    "tests/test_torch_moduleinfo.py::test_moduleinfo_samples_match_pytorch[Transformer-eval]",
    "tests/test_torch_opinfo.py::test_opinfo_samples_match_pytorch[grid_sampler_3d-float32]",
    "tests/test_torch_opinfo.py::test_opinfo_samples_match_pytorch[max_pool2d_with_indices_backward-float16]",
    "tests/test_torch_opinfo.py::test_opinfo_samples_match_pytorch[max_pool2d_with_indices_backward-float32]",
    "tests/test_torch_opinfo.py::test_opinfo_samples_match_pytorch[max_pool2d_with_indices_backward-float64]",
    "tests/test_torch_opinfo.py::test_opinfo_samples_match_pytorch[nn.functional.conv3d-float64]",
    "tests/test_torch_opinfo.py::test_opinfo_samples_match_pytorch[nn.functional.max_pool2d-float32]",
    "tests/test_torch_opinfo.py::test_opinfo_samples_match_pytorch[nn.functional.max_pool2d-float64]",
    "tests/test_torch_opinfo.py::test_opinfo_samples_match_pytorch[nn.functional.max_pool2d-int64]",
    "tests/test_torch_opinfo.py::test_opinfo_samples_match_pytorch[nn.functional.max_unpool2d-float16]",
    "tests/test_torch_opinfo_jit.py::test_opinfo_samples_under_jit_equal_eager[gradient]",
    "tests/test_torch_opinfo_jit.py::test_opinfo_samples_under_jit_equal_eager[grid_sampler_2d]",
    "tests/test_torch_opinfo_jit.py::test_opinfo_samples_under_jit_equal_eager[nn.functional.batch_norm]",
    "tests/test_torch_opinfo_jit.py::test_opinfo_samples_under_jit_equal_eager[nn.functional.group_norm]",
    "tests/test_torch_opinfo_jit.py::test_opinfo_samples_under_jit_equal_eager[nn.functional.hinge_embedding_loss]",
    "tests/test_torch_opinfo_vmap.py::test_opinfo_samples_under_vmap_equal_a_loop[grid_sampler_3d]",
    "tests/test_torch_opinfo_vmap.py::test_opinfo_vjp_fn_under_vmap_equals_a_loop[grid_sampler_3d]",
    "tests/test_torch_opinfo_vmap.py::test_opinfo_vjp_fn_under_vmap_equals_a_loop[nn.functional.max_pool2d]",
    "tests/test_train_checkpoint.py::test_checkpoint_size_does_not_grow_with_the_steps",
    "tests/test_benchmarks.py::test_e2e_script_runs_both_frameworks_from_the_same_weights",
    "tests/test_benchmarks.py::test_jax_reference_column_agrees_on_j5",
    "tests/test_benchmarks.py::test_separate_process_mode_times_every_framework",
    "tests/test_benchmarks.py::test_workload_runs_and_frameworks_agree[J4]",
    "tests/test_benchmarks.py::test_workload_runs_and_frameworks_agree[J9]",
    "tests/test_cli.py::test_cli_resume_after_sigkill_is_bit_identical",
    "tests/test_distributed.py::test_cli_train_under_the_launcher",
    "tests/test_distributed.py::test_collective_with_a_missing_rank_times_out",
    "tests/test_distributed.py::test_mid_epoch_checkpoint_resumes_on_another_number_of_ranks[before0-after0]",
    "tests/test_distributed.py::test_mid_epoch_checkpoint_resumes_on_another_number_of_ranks[before1-after1]",
    "tests/test_distributed.py::test_rank_that_raises_ends_the_job_naming_it",
    "tests/test_distributed.py::test_ranks_match_one_process_on_the_full_batch[2]",
    "tests/test_distributed.py::test_ranks_match_one_process_with_device_tensors",
    "tests/test_distributed_more.py::test_collectives_on_three_ranks",
    "tests/test_distributed_more.py::test_zero_redundancy_optimizer_equals_one_optimizer_on_two_ranks",
    "tests/test_distributions_more.py::test_jit_draws_afresh_and_gradients_flow",
    "tests/test_docs.py::test_doc_page_python_blocks_run_in_order[training.md]",
    "tests/test_eager_numba_upgrade.py::test_training_imports_numba_after_its_time_with_the_same_bits",
    "tests/test_examples.py::test_example_runs_and_draws_its_figures[augmentation_grid.py]",
    "tests/test_examples.py::test_example_runs_and_draws_its_figures[autodiff_diagnostics.py]",
    "tests/test_examples.py::test_example_runs_and_draws_its_figures[bottleneck_pca.py]",
    "tests/test_examples.py::test_example_runs_and_draws_its_figures[linear_regions.py]",
    "tests/test_examples.py::test_example_runs_and_draws_its_figures[loss_landscape.py]",
    "tests/test_examples.py::test_example_runs_and_draws_its_figures[nonlinearities.py]",
    "tests/test_examples.py::test_example_runs_and_draws_its_figures[sgd_noise.py]",
    "tests/test_fixes_dist_io.py::test_collectives_ddp_and_mismatch_on_two_ranks",
    "tests/test_fixes_dist_io.py::test_sync_batchnorm_far_from_zero_matches_torch",
    "tests/test_jit_loops.py::test_kernels_match_the_eager_primitives[1-1-5-3]",
    "tests/test_jit_loops.py::test_kernels_match_the_eager_primitives[1-3-1-33]",
    "tests/test_jit_loops.py::test_kernels_match_the_eager_primitives[2-16-7-17]",
    "tests/test_jit_loops.py::test_kernels_match_the_eager_primitives[2-6-40-100]",
    "tests/test_jit_loops.py::test_printed_program_counts_the_compiled_loops",
    "tests/test_jit_loops.py::test_strided_inputs_batch_major_states_and_no_weight_gradient",
    "tests/test_jit_passes.py::test_a_full_sum_ends_a_fused_kernel_within_tolerance[float32]",
    "tests/test_jit_ports_compile.py::test_tutorial_loop_fused",
    "tests/test_jit_ports_genrl.py::test_vae_reparameterised[float32-fused]",
    "tests/test_jit_ports_sequence.py::test_attention_scores_masked_by_setitem[fused]",
    "tests/test_jit_ports_sequence.py::test_gpt_sdpa_causal_tied[1-None]",
    "tests/test_jit_ports_sequence.py::test_word_lm_truncated_bptt_tied[LSTM-None]",
    "tests/test_jit_ports_transformer.py::test_bert_encoder_padding_masks[post_norm-fused]",
    "tests/test_jit_ports_vision.py::test_small_cnn_sgd_nesterov_label_smoothing[float32-fused]",
    "tests/test_lax.py::test_recurrent_layers_under_jit_use_one_scan[GRU]",
    "tests/test_memory.py::test_memory_flat_over_training[backward]",
    "tests/test_onnx.py::test_onnx_transfer_example_runs",
    "tests/test_ports_data.py::test_spawn_context_gives_the_same_stream",
    "tests/test_ports_forecast.py::test_compiled_tabular_model",
    "tests/test_ports_jax_idioms.py::test_program_matches_jax[gaussian_process]",
    "tests/test_ports_jax_idioms.py::test_program_matches_jax[hmm_forward]",
    "tests/test_ports_jax_idioms.py::test_program_matches_jax[lstm_scan]",
    "tests/test_ports_pretrain.py::test_jit_fused_bert_forward_with_unused_inputs_replays_as_eager",
    "tests/test_ports_pretrain.py::test_t5_span_corruption_pretraining_matches_torch[smooth]",
    "tests/test_ports_sequence.py::test_compiled_lstm_over_packed_lengths_matches_torch",
    "tests/test_torch_opinfo_jit.py::test_opinfo_samples_under_jit_equal_eager[grid_sampler_3d]",
    "tests/test_torch_opinfo_jit.py::test_opinfo_samples_under_jit_equal_eager[nn.functional.grid_sample]",
    "tests/test_torch_opinfo_jit.py::test_opinfo_samples_under_jit_equal_eager[nn.functional.instance_norm]",
    "tests/test_train_checkpoint.py::test_sigkill_mid_epoch_resume_is_bit_identical[jit]",
}


@pytest.hookimpl(tryfirst=True)  # before ``-m 'not slow'`` deselects
def pytest_collection_modifyitems(config, items):
    """The cases in ``_SLOW_CASES`` are marked ``slow``; tests marked ``gpu`` skip, with the
    reason, where CuPy or a CUDA device is missing."""
    slow = pytest.mark.slow
    for item in items:
        if item.nodeid in _SLOW_CASES:
            item.add_marker(slow)
    if ng.cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _jit_kernel_cache(tmp_path_factory):
    """One directory of compiled jit kernels for the whole session (not the user's cache)."""
    from nodegrad.jit import fuse

    fuse.set_cache_dir(tmp_path_factory.mktemp("jit-kernels"))


@pytest.fixture(autouse=True)
def _torch_distributions_validate():
    """PyTorch's distributions check their arguments by default, but the first use of
    torch._dynamo (a test that calls torch.compile as a reference) switches that off for the
    rest of the process; tests that compare refusals with PyTorch's need it on, whatever ran
    before them in the worker."""
    yield
    dists = sys.modules.get("torch.distributions")
    if dists is not None and not dists.Distribution._validate_args:
        dists.Distribution.set_default_validate_args(True)


@pytest.fixture(params=["numpy", "numba"])
def cpu_kernels(request, monkeypatch):
    """Runs a test with _backend's numba loops off, then on (as where numba is imported)."""
    from nodegrad import _backend as B

    if request.param == "numpy":
        monkeypatch.setattr(B, "_kernels", False)
    else:
        pytest.importorskip("numba")
        monkeypatch.setattr(B, "_kernels", None)
        assert B.cpu_kernels() is not None
    return request.param


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed, fresh for each test."""
    return np.random.default_rng(0)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def float_dtype(request):
    """Each floating dtype nodegrad computes in."""
    return request.param


@pytest.fixture(params=[pytest.param("gpu", marks=pytest.mark.gpu), "stand-in"])
def cuda(request):
    """The name of a CUDA device under test: the GPU (marked ``gpu``) or, in every run, the
    stand-in device of ``_fakecupy`` (NumPy inside, CuPy's refusals outside)."""
    if request.param == "gpu":
        yield "cuda"
    else:
        import _fakecupy

        with _fakecupy.installed():
            yield "cuda"
