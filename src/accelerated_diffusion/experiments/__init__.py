"""The reproduction: experiments, results files and the helpers of the chapters."""
